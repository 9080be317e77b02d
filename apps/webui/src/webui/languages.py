"""The UI languages, in a module light enough for the command line to read before anything heavy is imported."""

LANGUAGES = ("zh", "en")
