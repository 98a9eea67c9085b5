"""View samplers of the object-level methods: what two views of an image show, and which regions they share."""
