"""Helper for the malformed-spec corpus: attributes a handler string must not point at."""

NOT_CALLABLE = 3
