"""The programs (command-line tools) of the hawq library: each module converts its arguments into
typed settings and calls the library; nothing in the library imports from here."""
