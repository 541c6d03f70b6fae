"""One network per file, each with its typed config. No I/O and no device policy here."""
