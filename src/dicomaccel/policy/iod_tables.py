"""IOD validation tables: modules, their required attributes, and the IODs that use them.

Plain data transcribed from PS3.3 (Information Object Definitions); tags and value
multiplicities from PS3.6 Table 6-1. :mod:`dicomaccel.policy.iod` turns it into per-SOP-Class
check lists at import time.

Scope, and why:

* Only attributes at the TOP LEVEL of the data set are listed. The ingest scanner jumps over
  sequence contents, so nothing nested in a sequence (macros inside items, functional group
  macros in the Shared/Per-frame Functional Groups Sequences, content items of an SR tree)
  can be checked; a Type 1 sequence is checked for having at least one item (non-zero
  length), not for what its items hold.
* Only Type 1 (present, with a value) and Type 2 (present, possibly empty) attributes
  (PS3.5 7.4). Type 1C/2C attributes are left out unless their condition can be evaluated
  from the presence of another top-level attribute (:data:`REQUIRED_UNLESS`), and Type 3
  attributes are never required.
* For each IOD, only the modules with usage M (mandatory) in its PS3.3 Annex A
  "IOD Modules" table. Modules whose every attribute is Type 1C, 2C or 3 contribute
  nothing and are not listed.
* Enumerated Values (:data:`ENUMERATED`, :data:`IOD_ENUMERATED`) only where PS3.3 calls
  them Enumerated Values (never for Defined Terms), and only for string (CS/LO) attributes.

The attribute types here are the ones in force for the IOD: where a modality module
specializes an attribute of a general module (for example the CT Image Module making
Image Type Type 1), both entries are listed and the validator keeps the stricter one.
"""

from __future__ import annotations

__all__ = [
    "Attribute",
    "MODULES",
    "REQUIRED_UNLESS",
    "ENUMERATED",
    "IOD_ENUMERATED",
    "VALUE_MULTIPLICITY",
    "IODS",
]

# (tag, keyword, type); type is "1" or "2" (PS3.5 7.4).
Attribute = tuple[int, str, str]

# --- Modules -------------------------------------------------------------------------------
# name -> (PS3.3 reference, attributes). The reference is the module's clause and, where
# given, in brackets, the table that lists its attributes.
# The Type 1 attributes of the Image Pixel Description Macro (PS3.3 Table C.7-11c) that the
# modality modules below restate with the same types.
_PIXEL_DESCRIPTION: tuple[Attribute, ...] = (
    (0x00280002, "SamplesPerPixel", "1"),
    (0x00280004, "PhotometricInterpretation", "1"),
    (0x00280100, "BitsAllocated", "1"),
    (0x00280101, "BitsStored", "1"),
    (0x00280102, "HighBit", "1"),
    (0x00280103, "PixelRepresentation", "1"),
)

MODULES: dict[str, tuple[str, tuple[Attribute, ...]]] = {
    # --- Common composite modules (PS3.3 C.7, C.12) ---
    "Patient": ("C.7.1.1 (Table C.7-1)", (
        (0x00100010, "PatientName", "2"),
        (0x00100020, "PatientID", "2"),
        (0x00100030, "PatientBirthDate", "2"),
        (0x00100040, "PatientSex", "2"),
    )),
    "General Study": ("C.7.2.1 (Table C.7-3)", (
        (0x0020000D, "StudyInstanceUID", "1"),
        (0x00080020, "StudyDate", "2"),
        (0x00080030, "StudyTime", "2"),
        (0x00080090, "ReferringPhysicianName", "2"),
        (0x00200010, "StudyID", "2"),
        (0x00080050, "AccessionNumber", "2"),
    )),
    "General Series": ("C.7.3.1 (Table C.7-5a)", (
        (0x00080060, "Modality", "1"),
        (0x0020000E, "SeriesInstanceUID", "1"),
        (0x00200011, "SeriesNumber", "2"),
    )),
    "Frame of Reference": ("C.7.4.1 (Table C.7-6)", (
        (0x00200052, "FrameOfReferenceUID", "1"),
        (0x00201040, "PositionReferenceIndicator", "2"),
    )),
    "General Equipment": ("C.7.5.1 (Table C.7-8)", (
        (0x00080070, "Manufacturer", "2"),
    )),
    "Enhanced General Equipment": ("C.7.5.2", (
        (0x00080070, "Manufacturer", "1"),
        (0x00081090, "ManufacturerModelName", "1"),
        (0x00181000, "DeviceSerialNumber", "1"),
        (0x00181020, "SoftwareVersions", "1"),
    )),
    "General Image": ("C.7.6.1 (Table C.7-9)", (
        (0x00200013, "InstanceNumber", "2"),
    )),
    "Image Plane": ("C.7.6.2 (Table C.7-10)", (
        (0x00280030, "PixelSpacing", "1"),
        (0x00200037, "ImageOrientationPatient", "1"),
        (0x00200032, "ImagePositionPatient", "1"),
        (0x00180050, "SliceThickness", "2"),
    )),
    # Table C.7-11a, which includes the Image Pixel Description Macro (Table C.7-11c).
    "Image Pixel": ("C.7.6.3 (Table C.7-11a)", (
        (0x00280002, "SamplesPerPixel", "1"),
        (0x00280004, "PhotometricInterpretation", "1"),
        (0x00280010, "Rows", "1"),
        (0x00280011, "Columns", "1"),
        (0x00280100, "BitsAllocated", "1"),
        (0x00280101, "BitsStored", "1"),
        (0x00280102, "HighBit", "1"),
        (0x00280103, "PixelRepresentation", "1"),
    )),
    # Frame Increment Pointer is Type 1C in this module; IOD modules that need it make it 1.
    "Multi-frame": ("C.7.6.6 (Table C.7-14)", (
        (0x00280008, "NumberOfFrames", "1"),
    )),
    "Acquisition Context": ("C.7.6.14", (
        (0x00400555, "AcquisitionContextSequence", "2"),
    )),
    # Shared Functional Groups Sequence: Type 2 in the module table of older editions and
    # Type 1 in later ones; the weaker requirement (present) is checked. Its items hold the
    # functional group macros, which are nested and not checked.
    "Multi-frame Functional Groups": ("C.7.6.16 (Table C.7.6.16-1)", (
        (0x52009229, "SharedFunctionalGroupsSequence", "2"),
        (0x52009230, "PerFrameFunctionalGroupsSequence", "1"),
        (0x00200013, "InstanceNumber", "1"),
        (0x00080023, "ContentDate", "1"),
        (0x00080033, "ContentTime", "1"),
        (0x00280008, "NumberOfFrames", "1"),
    )),
    "Multi-frame Dimension": ("C.7.6.17 (Table C.7.6.17-1)", (
        (0x00209221, "DimensionOrganizationSequence", "1"),
    )),
    "SOP Common": ("C.12.1 (Table C.12-1)", (
        (0x00080016, "SOPClassUID", "1"),
        (0x00080018, "SOPInstanceUID", "1"),
    )),
    # --- CR (PS3.3 C.8.1) ---
    "CR Series": ("C.8.1.1 (Table C.8-1)", (
        (0x00180015, "BodyPartExamined", "2"),
        (0x00185101, "ViewPosition", "2"),
    )),
    "CR Image": ("C.8.1.2 (Table C.8-2)", (
        (0x00280004, "PhotometricInterpretation", "1"),
    )),
    # --- CT (PS3.3 C.8.2.1) ---
    "CT Image": ("C.8.2.1 (Table C.8-3)", (
        (0x00080008, "ImageType", "1"),
        (0x00280002, "SamplesPerPixel", "1"),
        (0x00280004, "PhotometricInterpretation", "1"),
        (0x00280100, "BitsAllocated", "1"),
        (0x00280101, "BitsStored", "1"),
        (0x00280102, "HighBit", "1"),
        (0x00281052, "RescaleIntercept", "1"),
        (0x00281053, "RescaleSlope", "1"),
        (0x00180060, "KVP", "2"),
        (0x00200012, "AcquisitionNumber", "2"),
    )),
    # --- MR (PS3.3 C.8.3.1) ---
    "MR Image": ("C.8.3.1 (Table C.8-4)", (
        (0x00080008, "ImageType", "1"),
        (0x00280002, "SamplesPerPixel", "1"),
        (0x00280004, "PhotometricInterpretation", "1"),
        (0x00280100, "BitsAllocated", "1"),
        (0x00180020, "ScanningSequence", "1"),
        (0x00180021, "SequenceVariant", "1"),
        (0x00180022, "ScanOptions", "2"),
        (0x00180023, "MRAcquisitionType", "2"),
        (0x00180081, "EchoTime", "2"),
        (0x00180091, "EchoTrainLength", "2"),
    )),
    # --- NM (PS3.3 C.8.4) ---
    "NM/PET Patient Orientation": ("C.8.4.6", (
        (0x00540410, "PatientOrientationCodeSequence", "2"),
        (0x00540414, "PatientGantryRelationshipCodeSequence", "2"),
    )),
    "NM Image Pixel": ("C.8.4.7", (
        (0x00280002, "SamplesPerPixel", "1"),
        (0x00280004, "PhotometricInterpretation", "1"),
        (0x00280100, "BitsAllocated", "1"),
        (0x00280101, "BitsStored", "1"),
        (0x00280102, "HighBit", "1"),
        (0x00280030, "PixelSpacing", "2"),
    )),
    "NM Multi-frame": ("C.8.4.8", (
        (0x00280009, "FrameIncrementPointer", "1"),
        (0x00540011, "NumberOfEnergyWindows", "1"),
        (0x00540021, "NumberOfDetectors", "1"),
    )),
    "NM Image": ("C.8.4.9", (
        (0x00080008, "ImageType", "1"),
        (0x00180070, "CountsAccumulated", "2"),
    )),
    "NM Isotope": ("C.8.4.10", (
        (0x00540012, "EnergyWindowInformationSequence", "2"),
        (0x00540016, "RadiopharmaceuticalInformationSequence", "2"),
    )),
    "NM Detector": ("C.8.4.11", (
        (0x00540022, "DetectorInformationSequence", "2"),
    )),
    # --- US (PS3.3 C.8.5.6) ---
    "US Image": ("C.8.5.6", (
        *_PIXEL_DESCRIPTION,
        (0x00080008, "ImageType", "2"),
    )),
    # --- Secondary Capture (PS3.3 C.8.6) ---
    "SC Equipment": ("C.8.6.1 (Table C.8-24)", (
        (0x00080064, "ConversionType", "1"),
    )),
    "SC Multi-frame Image": ("C.8.6.3 (Table C.8-25b)", (
        (0x00280301, "BurnedInAnnotation", "1"),
    )),
    # --- XA / RF (PS3.3 C.8.7) ---
    "X-Ray Image": ("C.8.7.1", (
        (0x00080008, "ImageType", "1"),
        (0x00281040, "PixelIntensityRelationship", "1"),
        *_PIXEL_DESCRIPTION,
    )),
    "X-Ray Acquisition": ("C.8.7.2", (
        (0x00180060, "KVP", "2"),
        (0x00181155, "RadiationSetting", "1"),
    )),
    "XA Positioner": ("C.8.7.5", (
        (0x00181510, "PositionerPrimaryAngle", "2"),
        (0x00181511, "PositionerSecondaryAngle", "2"),
    )),
    # --- PET (PS3.3 C.8.9) ---
    "PET Series": ("C.8.9.1 (Table C.8-60)", (
        (0x00080021, "SeriesDate", "1"),
        (0x00080031, "SeriesTime", "1"),
        (0x00541001, "Units", "1"),
        (0x00541002, "CountsSource", "1"),
        (0x00541000, "SeriesType", "1"),
        (0x00540081, "NumberOfSlices", "1"),
        (0x00280051, "CorrectedImage", "2"),
        (0x00541102, "DecayCorrection", "1"),
        (0x00181181, "CollimatorType", "2"),
    )),
    "PET Isotope": ("C.8.9.2", (
        (0x00540016, "RadiopharmaceuticalInformationSequence", "2"),
    )),
    "PET Image": ("C.8.9.4", (
        (0x00080008, "ImageType", "1"),
        (0x00280002, "SamplesPerPixel", "1"),
        (0x00280004, "PhotometricInterpretation", "1"),
        (0x00280100, "BitsAllocated", "1"),
        (0x00280101, "BitsStored", "1"),
        (0x00280102, "HighBit", "1"),
        (0x00281052, "RescaleIntercept", "1"),
        (0x00281053, "RescaleSlope", "1"),
        (0x00541300, "FrameReferenceTime", "1"),
        (0x00541330, "ImageIndex", "1"),
        (0x00080022, "AcquisitionDate", "2"),
        (0x00080032, "AcquisitionTime", "2"),
        (0x00181242, "ActualFrameDuration", "2"),
    )),
    # --- DX, MG, IO (PS3.3 C.8.11) ---
    "DX Series": ("C.8.11.1", (
        (0x00080060, "Modality", "1"),
        (0x00080068, "PresentationIntentType", "1"),
    )),
    # Anatomic Region Sequence comes from the General Anatomy Required Macro (PS3.3 Section 10),
    # included at the top level of this module.
    "DX Anatomy Imaged": ("C.8.11.2", (
        (0x00200062, "ImageLaterality", "1"),
        (0x00082218, "AnatomicRegionSequence", "2"),
    )),
    "DX Image": ("C.8.11.3", (
        (0x00080008, "ImageType", "1"),
        *_PIXEL_DESCRIPTION,
        (0x00281040, "PixelIntensityRelationship", "1"),
        (0x00281041, "PixelIntensityRelationshipSign", "1"),
        (0x00281052, "RescaleIntercept", "1"),
        (0x00281053, "RescaleSlope", "1"),
        (0x00281054, "RescaleType", "1"),
        (0x20500020, "PresentationLUTShape", "1"),
        (0x00282110, "LossyImageCompression", "1"),
        (0x00280301, "BurnedInAnnotation", "1"),
    )),
    # Detector Type comes from the Digital X-Ray Detector Macro, included at the top level.
    "DX Detector": ("C.8.11.4", (
        (0x00187004, "DetectorType", "2"),
        (0x00181164, "ImagerPixelSpacing", "1"),
    )),
    "Mammography Series": ("C.8.11.6", (
        (0x00080060, "Modality", "1"),
    )),
    # Anatomic Region Sequence via the General Anatomy Mandatory Macro (PS3.3 Section 10).
    "Mammography Image": ("C.8.11.7", (
        (0x00080008, "ImageType", "1"),
        (0x00181508, "PositionerType", "1"),
        (0x00200062, "ImageLaterality", "1"),
        (0x00400318, "OrganExposed", "1"),
        (0x00082218, "AnatomicRegionSequence", "1"),
        (0x00540220, "ViewCodeSequence", "1"),
    )),
    "Intra-oral Series": ("C.8.11.8", (
        (0x00080060, "Modality", "1"),
    )),
    "Intra-oral Image": ("C.8.11.9", (
        (0x00181508, "PositionerType", "1"),
        (0x00200062, "ImageLaterality", "1"),
        (0x00082218, "AnatomicRegionSequence", "1"),
    )),
    # --- Enhanced MR (PS3.3 C.8.13) ---
    # Includes the Common CT/MR Image Description Macro (Table C.8-131) and the MR Image
    # Description Macro (Table C.8-84) at the top level. Complex Image Component and
    # Acquisition Contrast are Type 1C, "required if SOP Class UID is not Legacy Converted";
    # this module is used here only for the Enhanced MR Image IOD, where the condition holds.
    "Enhanced MR Image": ("C.8.13.1 (Table C.8-79)", (
        (0x00080008, "ImageType", "1"),
        (0x00089205, "PixelPresentation", "1"),
        (0x00089206, "VolumetricProperties", "1"),
        (0x00089207, "VolumeBasedCalculationTechnique", "1"),
        (0x00089208, "ComplexImageComponent", "1"),
        (0x00089209, "AcquisitionContrast", "1"),
        *_PIXEL_DESCRIPTION,
    )),
    "MR Series": ("C.8.13.6", (
        (0x00080060, "Modality", "1"),
    )),
    # --- Enhanced CT (PS3.3 C.8.15) ---
    "CT Series": ("C.8.15.1 (Table C.8-113)", (
        (0x00080060, "Modality", "1"),
    )),
    # Includes the Common CT/MR Image Description Macro (Table C.8-131) at the top level.
    "Enhanced CT Image": ("C.8.15.2 (Table C.8-114)", (
        (0x00080008, "ImageType", "1"),
        (0x00089205, "PixelPresentation", "1"),
        (0x00089206, "VolumetricProperties", "1"),
        (0x00089207, "VolumeBasedCalculationTechnique", "1"),
        (0x00280002, "SamplesPerPixel", "1"),
        (0x00280004, "PhotometricInterpretation", "1"),
        (0x00280100, "BitsAllocated", "1"),
        (0x00280101, "BitsStored", "1"),
        (0x00280102, "HighBit", "1"),
    )),
    # --- Enhanced XA / XRF (PS3.3 C.8.19) ---
    "XA/XRF Series": ("C.8.19.1", (
        (0x00080060, "Modality", "1"),
        (0x00200011, "SeriesNumber", "1"),
    )),
    "Enhanced XA/XRF Image": ("C.8.19.2", (
        (0x00080008, "ImageType", "1"),
        (0x00189410, "PlanesInAcquisition", "1"),
        (0x0008002A, "AcquisitionDateTime", "1"),
        (0x00280100, "BitsAllocated", "1"),
        (0x00280101, "BitsStored", "1"),
        (0x00280102, "HighBit", "1"),
        (0x00280002, "SamplesPerPixel", "1"),
        (0x00280103, "PixelRepresentation", "1"),
        (0x00280004, "PhotometricInterpretation", "1"),
        (0x00189004, "ContentQualification", "1"),
        (0x00280301, "BurnedInAnnotation", "1"),
        (0x00282110, "LossyImageCompression", "1"),
        (0x20500020, "PresentationLUTShape", "1"),
    )),
    # --- Segmentation (PS3.3 C.8.20) ---
    "Segmentation Series": ("C.8.20.1 (Table C.8.20-1)", (
        (0x00080060, "Modality", "1"),
        (0x00200011, "SeriesNumber", "1"),
    )),
    # Includes the Content Identification Macro (Table 10-12) at the top level.
    "Segmentation Image": ("C.8.20.2 (Table C.8.20-2)", (
        (0x00080008, "ImageType", "1"),
        (0x00200013, "InstanceNumber", "1"),
        (0x00700080, "ContentLabel", "1"),
        (0x00700081, "ContentDescription", "2"),
        (0x00280002, "SamplesPerPixel", "1"),
        (0x00280004, "PhotometricInterpretation", "1"),
        (0x00280103, "PixelRepresentation", "1"),
        (0x00280100, "BitsAllocated", "1"),
        (0x00280101, "BitsStored", "1"),
        (0x00280102, "HighBit", "1"),
        (0x00282110, "LossyImageCompression", "1"),
        (0x00620001, "SegmentationType", "1"),
        (0x00620002, "SegmentSequence", "1"),
    )),
    # --- Structured Reporting (PS3.3 C.17) ---
    "SR Document Series": ("C.17.1", (
        (0x00080060, "Modality", "1"),
        (0x0020000E, "SeriesInstanceUID", "1"),
        (0x00200011, "SeriesNumber", "1"),
        (0x00081111, "ReferencedPerformedProcedureStepSequence", "2"),
    )),
    "SR Document General": ("C.17.2", (
        (0x00200013, "InstanceNumber", "1"),
        (0x0040A491, "CompletionFlag", "1"),
        (0x0040A493, "VerificationFlag", "1"),
        (0x00080023, "ContentDate", "1"),
        (0x00080033, "ContentTime", "1"),
        (0x0040A372, "PerformedProcedureCodeSequence", "2"),
    )),
    # The root content item's Document Content Macro, at the top level.
    "SR Document Content": ("C.17.3", (
        (0x0040A040, "ValueType", "1"),
    )),
    "Key Object Document Series": ("C.17.6.1", (
        (0x00080060, "Modality", "1"),
        (0x0020000E, "SeriesInstanceUID", "1"),
        (0x00200011, "SeriesNumber", "1"),
        (0x00081111, "ReferencedPerformedProcedureStepSequence", "2"),
    )),
    "Key Object Document": ("C.17.6.2", (
        (0x00200013, "InstanceNumber", "1"),
        (0x00080023, "ContentDate", "1"),
        (0x00080033, "ContentTime", "1"),
        (0x0040A375, "CurrentRequestedProcedureEvidenceSequence", "1"),
    )),
    # --- Encapsulated documents (PS3.3 C.24) ---
    "Encapsulated Document Series": ("C.24.1", (
        (0x00080060, "Modality", "1"),
        (0x0020000E, "SeriesInstanceUID", "1"),
        (0x00200011, "SeriesNumber", "1"),
    )),
    "Encapsulated Document": ("C.24.2", (
        (0x00200013, "InstanceNumber", "1"),
        (0x00080023, "ContentDate", "2"),
        (0x00080033, "ContentTime", "2"),
        (0x0008002A, "AcquisitionDateTime", "2"),
        (0x00280301, "BurnedInAnnotation", "1"),
        (0x00420010, "DocumentTitle", "2"),
        (0x0040A043, "ConceptNameCodeSequence", "2"),
        (0x00420012, "MIMETypeOfEncapsulatedDocument", "1"),
        (0x00420011, "EncapsulatedDocument", "1"),
    )),
}

# Type 1C attributes whose condition is "required unless another attribute is present":
# module -> ((tag, keyword, other_tag), ...).
REQUIRED_UNLESS: dict[str, tuple[tuple[int, str, int], ...]] = {
    # PS3.3 C.7.6.3: Pixel Data is required if Pixel Data Provider URL (0028,7FE0) is absent
    # (the pixels are then fetched with JPIP, PS3.5 A.6).
    "Image Pixel": ((0x7FE00010, "PixelData", 0x00287FE0),),
}

# --- Enumerated Values ----------------------------------------------------------------------
# module -> ((tag, value index or None, allowed values), ...). Index None checks every value
# of the attribute; an index checks that value only (0 is Value 1). Checked only when the
# attribute is present with a value, so Type 2 attributes may still be empty.
_ORIGINAL_DERIVED = frozenset(("ORIGINAL", "DERIVED"))
_PRIMARY_SECONDARY = frozenset(("PRIMARY", "SECONDARY"))
_MONOCHROME = frozenset(("MONOCHROME1", "MONOCHROME2"))
_MONOCHROME2 = frozenset(("MONOCHROME2",))
_YES_NO = frozenset(("YES", "NO"))
_LOSSY = frozenset(("00", "01"))  # C.7.6.1.1.5

# Image Type Values 1 and 2 of the classic image IODs (C.7.6.1.1.2).
_CLASSIC_IMAGE_TYPE = (
    (0x00080008, 0, _ORIGINAL_DERIVED),
    (0x00080008, 1, _PRIMARY_SECONDARY),
)

ENUMERATED: dict[str, tuple[tuple[int, int | None, frozenset[str]], ...]] = {
    "Patient": ((0x00100040, None, frozenset(("M", "F", "O"))),),  # C.7.1.1
    "CR Image": ((0x00280004, None, _MONOCHROME),),  # C.8.1.2
    "CT Image": _CLASSIC_IMAGE_TYPE + ((0x00280004, None, _MONOCHROME),),  # C.8.2.1.1
    "MR Image": _CLASSIC_IMAGE_TYPE + (  # C.8.3.1.1
        (0x00280004, None, _MONOCHROME),
        (0x00180020, None, frozenset(("SE", "IR", "GR", "EP", "RM"))),
        (0x00180023, None, frozenset(("2D", "3D"))),
    ),
    "NM Image Pixel": ((0x00280004, None, frozenset(("MONOCHROME2", "PALETTE COLOR"))),),
    "NM Image": _CLASSIC_IMAGE_TYPE,
    "US Image": _CLASSIC_IMAGE_TYPE,
    "SC Multi-frame Image": ((0x00280301, None, _YES_NO),),  # C.8.6.3
    "X-Ray Image": _CLASSIC_IMAGE_TYPE + ((0x00280004, None, _MONOCHROME2),),  # C.8.7.1.1
    "X-Ray Acquisition": ((0x00181155, None, frozenset(("SC", "GR"))),),  # C.8.7.2
    "PET Series": (  # C.8.9.1
        (0x00541002, None, frozenset(("EMISSION", "TRANSMISSION"))),
        (0x00541000, 0, frozenset(("STATIC", "DYNAMIC", "GATED", "WHOLE BODY"))),
        (0x00541000, 1, frozenset(("IMAGE", "REPROJECTION"))),
        (0x00541102, None, frozenset(("NONE", "START", "ADMIN"))),
    ),
    "PET Image": _CLASSIC_IMAGE_TYPE + ((0x00280004, None, _MONOCHROME2),),  # C.8.9.4
    "DX Series": (  # C.8.11.1
        (0x00080068, None, frozenset(("FOR PRESENTATION", "FOR PROCESSING"))),
    ),
    "DX Anatomy Imaged": ((0x00200062, None, frozenset(("R", "L", "U", "B"))),),  # C.8.11.2
    "DX Image": _CLASSIC_IMAGE_TYPE + (  # C.8.11.3
        (0x00280004, None, _MONOCHROME),
        (0x20500020, None, frozenset(("IDENTITY", "INVERSE"))),
        (0x00282110, None, _LOSSY),
        (0x00280301, None, _YES_NO),
    ),
    "Mammography Series": ((0x00080060, None, frozenset(("MG",))),),  # C.8.11.6
    "Mammography Image": (  # C.8.11.7
        (0x00181508, None, frozenset(("MAMMOGRAPHIC", "NONE"))),
    ),
    "Intra-oral Series": ((0x00080060, None, frozenset(("IO",))),),  # C.8.11.8
    "Enhanced MR Image": (  # C.8.16.1.1: Value 1 of the enhanced IODs adds MIXED
        (0x00080008, 0, frozenset(("ORIGINAL", "DERIVED", "MIXED"))),
    ),
    "MR Series": ((0x00080060, None, frozenset(("MR",))),),  # C.8.13.6
    "CT Series": ((0x00080060, None, frozenset(("CT",))),),  # C.8.15.1
    "Enhanced CT Image": (  # C.8.15.2, C.8.16.1.1
        (0x00080008, 0, frozenset(("ORIGINAL", "DERIVED", "MIXED"))),
        (0x00280004, None, _MONOCHROME2),
    ),
    "XA/XRF Series": ((0x00080060, None, frozenset(("XA", "RF"))),),  # C.8.19.1
    "Enhanced XA/XRF Image": (  # C.8.19.2
        (0x00280004, None, _MONOCHROME2),
        (0x00189004, None, frozenset(("PRODUCT", "RESEARCH", "SERVICE"))),
        (0x00280301, None, _YES_NO),
        (0x00282110, None, _LOSSY),
    ),
    "Segmentation Series": ((0x00080060, None, frozenset(("SEG",))),),  # C.8.20.1
    "Segmentation Image": (  # C.8.20.2
        (0x00280004, None, _MONOCHROME2),
        (0x00282110, None, _LOSSY),
        (0x00620001, None, frozenset(("BINARY", "FRACTIONAL", "LABELMAP"))),
    ),
    "SR Document Series": ((0x00080060, None, frozenset(("SR",))),),  # C.17.1
    "SR Document General": (  # C.17.2
        (0x0040A491, None, frozenset(("PARTIAL", "COMPLETE"))),
        (0x0040A493, None, frozenset(("UNVERIFIED", "VERIFIED"))),
    ),
    "Key Object Document Series": ((0x00080060, None, frozenset(("KO",))),),  # C.17.6.1
    "Encapsulated Document": ((0x00280301, None, _YES_NO),),  # C.24.2
}

# --- Value multiplicity (PS3.6 Table 6-1) ---------------------------------------------------
# tag -> (minimum, maximum or None for "n"). Checked for present, non-empty attributes that
# an IOD's table lists.
VALUE_MULTIPLICITY: dict[int, tuple[int, int | None]] = {
    0x00080008: (2, None),  # Image Type, 2-n
    0x00200032: (3, 3),  # Image Position (Patient)
    0x00200037: (6, 6),  # Image Orientation (Patient)
    0x00280030: (2, 2),  # Pixel Spacing
    0x00181164: (2, 2),  # Imager Pixel Spacing
    0x00541000: (2, 2),  # Series Type
}

# --- IODs -----------------------------------------------------------------------------------
# The M modules of each IOD's "IOD Modules" table in PS3.3 Annex A, in table order.
_CT = ("Patient", "General Study", "General Series", "Frame of Reference",
       "General Equipment", "General Image", "Image Plane", "Image Pixel", "CT Image",
       "SOP Common")
_MR = ("Patient", "General Study", "General Series", "Frame of Reference",
       "General Equipment", "General Image", "Image Plane", "Image Pixel", "MR Image",
       "SOP Common")
_CR = ("Patient", "General Study", "General Series", "CR Series", "General Equipment",
       "General Image", "Image Pixel", "CR Image", "SOP Common")
_DX = ("Patient", "General Study", "General Series", "DX Series", "General Equipment",
       "General Image", "Image Pixel", "DX Anatomy Imaged", "DX Image", "DX Detector",
       "Acquisition Context", "SOP Common")
_MG = ("Patient", "General Study", "General Series", "DX Series", "Mammography Series",
       "General Equipment", "General Image", "Image Pixel", "DX Anatomy Imaged", "DX Image",
       "DX Detector", "Mammography Image", "Acquisition Context", "SOP Common")
_IO = ("Patient", "General Study", "General Series", "DX Series", "Intra-oral Series",
       "General Equipment", "General Image", "Image Pixel", "DX Anatomy Imaged", "DX Image",
       "DX Detector", "Intra-oral Image", "Acquisition Context", "SOP Common")
_US = ("Patient", "General Study", "General Series", "General Equipment", "General Image",
       "Image Pixel", "US Image", "SOP Common")
_US_MF = ("Patient", "General Study", "General Series", "General Equipment",
          "General Image", "Image Pixel", "Multi-frame", "US Image", "SOP Common")
_SC = ("Patient", "General Study", "General Series", "SC Equipment", "General Image",
       "Image Pixel", "SOP Common")
_SC_MF = ("Patient", "General Study", "General Series", "SC Equipment", "General Image",
          "Image Pixel", "Multi-frame", "SC Multi-frame Image", "SOP Common")
_NM = ("Patient", "General Study", "General Series", "NM/PET Patient Orientation",
       "General Equipment", "General Image", "Image Pixel", "NM Image Pixel", "Multi-frame",
       "NM Multi-frame", "NM Image", "NM Isotope", "NM Detector", "SOP Common")
_PET = ("Patient", "General Study", "General Series", "PET Series", "PET Isotope",
        "NM/PET Patient Orientation", "Frame of Reference", "General Equipment",
        "General Image", "Image Plane", "Image Pixel", "PET Image", "SOP Common")
_XA = ("Patient", "General Study", "General Series", "General Equipment", "General Image",
       "Image Pixel", "X-Ray Image", "X-Ray Acquisition", "XA Positioner", "SOP Common")
_RF = ("Patient", "General Study", "General Series", "General Equipment", "General Image",
       "Image Pixel", "X-Ray Image", "X-Ray Acquisition", "SOP Common")
_ENH_CT = ("Patient", "General Study", "General Series", "CT Series", "Frame of Reference",
           "General Equipment", "Enhanced General Equipment", "Image Pixel",
           "Multi-frame Functional Groups", "Multi-frame Dimension", "Acquisition Context",
           "Enhanced CT Image", "SOP Common")
_ENH_MR = ("Patient", "General Study", "General Series", "MR Series", "Frame of Reference",
           "General Equipment", "Enhanced General Equipment", "Image Pixel",
           "Multi-frame Functional Groups", "Multi-frame Dimension", "Acquisition Context",
           "Enhanced MR Image", "SOP Common")
_ENH_XA = ("Patient", "General Study", "General Series", "XA/XRF Series",
           "General Equipment", "Enhanced General Equipment", "Image Pixel",
           "Multi-frame Functional Groups", "Acquisition Context", "Enhanced XA/XRF Image",
           "SOP Common")
_SEG = ("Patient", "General Study", "General Series", "Segmentation Series",
        "General Equipment", "Enhanced General Equipment", "General Image", "Image Pixel",
        "Segmentation Image", "Multi-frame Functional Groups", "Multi-frame Dimension",
        "SOP Common")
_SR = ("Patient", "General Study", "SR Document Series", "General Equipment",
       "SR Document General", "SR Document Content", "SOP Common")
_KOS = ("Patient", "General Study", "Key Object Document Series", "General Equipment",
        "Key Object Document", "SR Document Content", "SOP Common")
_PDF = ("Patient", "General Study", "Encapsulated Document Series", "General Equipment",
        "SC Equipment", "Encapsulated Document", "SOP Common")

# SOP Class UID (PS3.6 Table A-1) -> (IOD name, PS3.3 Annex A clause of the IOD, modules).
IODS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "1.2.840.10008.5.1.4.1.1.1": ("CR Image", "A.2", _CR),
    "1.2.840.10008.5.1.4.1.1.1.1": ("Digital X-Ray Image", "A.26", _DX),
    "1.2.840.10008.5.1.4.1.1.1.1.1": ("Digital X-Ray Image", "A.26", _DX),
    "1.2.840.10008.5.1.4.1.1.1.2": (
        "Digital Mammography X-Ray Image", "A.27", _MG),
    "1.2.840.10008.5.1.4.1.1.1.2.1": (
        "Digital Mammography X-Ray Image", "A.27", _MG),
    "1.2.840.10008.5.1.4.1.1.1.3": (
        "Digital Intra-Oral X-Ray Image", "A.28", _IO),
    "1.2.840.10008.5.1.4.1.1.1.3.1": (
        "Digital Intra-Oral X-Ray Image", "A.28", _IO),
    "1.2.840.10008.5.1.4.1.1.2": ("CT Image", "A.3.3 (Table A.3-1)", _CT),
    "1.2.840.10008.5.1.4.1.1.2.1": ("Enhanced CT Image", "A.38.1", _ENH_CT),
    "1.2.840.10008.5.1.4.1.1.3.1": (
        "Ultrasound Multi-frame Image", "A.7", _US_MF),
    "1.2.840.10008.5.1.4.1.1.4": ("MR Image", "A.4.3 (Table A.4-1)", _MR),
    "1.2.840.10008.5.1.4.1.1.4.1": ("Enhanced MR Image", "A.36.2", _ENH_MR),
    "1.2.840.10008.5.1.4.1.1.6.1": ("Ultrasound Image", "A.6", _US),
    "1.2.840.10008.5.1.4.1.1.7": ("Secondary Capture Image", "A.8.1", _SC),
    "1.2.840.10008.5.1.4.1.1.7.1": (
        "Multi-frame Single Bit Secondary Capture Image", "A.8.2", _SC_MF),
    "1.2.840.10008.5.1.4.1.1.7.2": (
        "Multi-frame Grayscale Byte Secondary Capture Image", "A.8.3",
        _SC_MF),
    "1.2.840.10008.5.1.4.1.1.7.3": (
        "Multi-frame Grayscale Word Secondary Capture Image", "A.8.4",
        _SC_MF),
    "1.2.840.10008.5.1.4.1.1.7.4": (
        "Multi-frame True Color Secondary Capture Image", "A.8.5", _SC_MF),
    "1.2.840.10008.5.1.4.1.1.12.1": ("X-Ray Angiographic Image", "A.14", _XA),
    "1.2.840.10008.5.1.4.1.1.12.1.1": ("Enhanced XA Image", "A.47", _ENH_XA),
    "1.2.840.10008.5.1.4.1.1.12.2": ("X-Ray RF Image", "A.16", _RF),
    "1.2.840.10008.5.1.4.1.1.12.2.1": ("Enhanced XRF Image", "A.48", _ENH_XA),
    "1.2.840.10008.5.1.4.1.1.20": ("NM Image", "A.5", _NM),
    "1.2.840.10008.5.1.4.1.1.66.4": ("Segmentation", "A.51", _SEG),
    "1.2.840.10008.5.1.4.1.1.88.11": ("Basic Text SR", "A.35.1", _SR),
    "1.2.840.10008.5.1.4.1.1.88.22": ("Enhanced SR", "A.35.2", _SR),
    "1.2.840.10008.5.1.4.1.1.88.33": ("Comprehensive SR", "A.35.3", _SR),
    "1.2.840.10008.5.1.4.1.1.88.59": (
        "Key Object Selection Document", "A.35.4", _KOS),
    "1.2.840.10008.5.1.4.1.1.104.1": ("Encapsulated PDF", "A.45.1", _PDF),
    "1.2.840.10008.5.1.4.1.1.128": ("PET Image", "A.21", _PET),
}

# IOD or SOP Class constraints on Enumerated Values, beyond the modules' own:
# SOP Class UID -> ((tag, value index or None, allowed values, module, clause), ...).
# The clause (which part, which section) is cited in the Problem comment.
_FOR_PRESENTATION = frozenset(("FOR PRESENTATION",))
_FOR_PROCESSING = frozenset(("FOR PROCESSING",))
_DX_INTENT = "PS3.4 B.5.1"  # For Presentation / For Processing SOP Classes


def _intent(values: frozenset[str]) -> tuple[tuple[int, None, frozenset[str], str, str]]:
    return ((0x00080068, None, values, "DX Series", _DX_INTENT),)


def _monochrome2(clause: str) -> tuple[tuple[int, None, frozenset[str], str, str]]:
    return ((0x00280004, None, _MONOCHROME2, "Image Pixel", clause),)


IOD_ENUMERATED: dict[str, tuple[tuple[int, int | None, frozenset[str], str, str], ...]] = {
    "1.2.840.10008.5.1.4.1.1.1.1": _intent(_FOR_PRESENTATION),
    "1.2.840.10008.5.1.4.1.1.1.1.1": _intent(_FOR_PROCESSING),
    "1.2.840.10008.5.1.4.1.1.1.2": _intent(_FOR_PRESENTATION),
    "1.2.840.10008.5.1.4.1.1.1.2.1": _intent(_FOR_PROCESSING),
    "1.2.840.10008.5.1.4.1.1.1.3": _intent(_FOR_PRESENTATION),
    "1.2.840.10008.5.1.4.1.1.1.3.1": _intent(_FOR_PROCESSING),
    # Enhanced MR Image IOD content constraints (the module defers the values to the IOD).
    "1.2.840.10008.5.1.4.1.1.4.1": _monochrome2("PS3.3 A.36.2"),
    # The multi-frame grayscale SC IODs constrain the Image Pixel Module to MONOCHROME2.
    "1.2.840.10008.5.1.4.1.1.7.1": _monochrome2("PS3.3 A.8.2"),
    "1.2.840.10008.5.1.4.1.1.7.2": _monochrome2("PS3.3 A.8.3"),
    "1.2.840.10008.5.1.4.1.1.7.3": _monochrome2("PS3.3 A.8.4"),
    # Encapsulated PDF: the MIME type is fixed by the IOD's Encapsulated Document constraints.
    "1.2.840.10008.5.1.4.1.1.104.1": (
        (0x00420012, None, frozenset(("application/pdf",)), "Encapsulated Document",
         "PS3.3 A.45.1"),
    ),
}
