"""The request grammar: parsing, shapes and parameter counts, data checks, model building."""
