"""DICOM objects the server writes and reads (highdicom, pydicom); no I/O here."""
