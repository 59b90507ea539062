"""Hospital interoperability formats, no Django: DICOMweb messages, the DICOM SR and
heat-map objects of a signed result, and its FHIR resources."""
