"""dicomaccel: a DICOM engine that stores over STOW-RS and retrieves over C-GET, down to frames."""

__version__ = "0.1.0"
