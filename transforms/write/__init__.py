"""Output: rolling parts in a part format, error files, the manifest last, and the URLs that name them."""
