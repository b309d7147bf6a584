"""The provider and buyer commands (`corpora push`, `corpora pull`): HTTP clients of the API that import
nothing of the server."""
