"""The hospital's PACS over DICOMweb."""
