"""Everything an upload passes before it is stored: validation by content, DICOM parsing
and de-identification, decoding, encryption at rest and the storage API."""
