"""What a user takes away from a study: export and registry, text and HTML reports, live view."""
