"""A synthetic query workload: studies of many patients, as index rows or as small files.

- :func:`synthetic_instances`: the attributes of ``instances`` instances, 40 per study, 2 series
  per study, 5,000 patients with random names (``<Family><n>^<Given>``, some not ASCII), random
  Study Dates, Modalities from :data:`MODALITIES`; the same sequence every time (seeded);
- :func:`fill`: those instances as rows of a :class:`~dicomaccel.archive.index.SQLiteIndex`
  (``put_batch``, no files), which ``dicomaccel serve --data`` answers QIDO-RS and C-FIND from:
  100,000 rows in seconds, where storing as many files would take many minutes.

Used by ``scripts/query_latency.py`` (in-process search latency) and by the benchmark runner
(``python -m benchmarks run --workloads qido``, which also writes the same attributes as small
PS3.10 files to load a peer over STOW-RS).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

from dicomaccel.archive.index import InstanceRecord, SQLiteIndex

FAMILY = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
          "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
          "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
          "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
          "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker",
          "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Müller", "Schmidt"]
GIVEN = ["James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "David",
         "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Anna"]
MODALITIES = ["CT", "MR", "US", "CR", "DX", "PT", "NM", "MG"]
STUDY_ROOT = "1.2.826.0.1.99"  # Study Instance UIDs are STUDY_ROOT.<n>
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def study_uid(n: int) -> str:
    return f"{STUDY_ROOT}.{n}"


def synthetic_instances(instances: int, per_study: int = 40, patients: int = 5000) -> Iterator[dict]:
    """The attributes of ``instances // per_study * per_study`` instances (keywords of the
    PS3.6 data dictionary), study by study; seeded, so every call yields the same."""
    rng = random.Random(11)
    names = [f"{rng.choice(FAMILY)}{i % 97}^{rng.choice(GIVEN)}" for i in range(patients)]
    for s in range(instances // per_study):
        p = rng.randrange(patients)
        study = study_uid(s)
        date = f"20{rng.randrange(10, 27):02d}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
        for k in range(per_study):
            series = f"{study}.{k % 2}"
            yield {"PatientID": f"PID{p:06d}", "PatientName": names[p], "StudyInstanceUID": study,
                   "SeriesInstanceUID": series, "SOPInstanceUID": f"{series}.{k}",
                   "SOPClassUID": CT_IMAGE_STORAGE, "InstanceNumber": k + 1, "StudyDate": date,
                   "StudyTime": "101500", "AccessionNumber": f"ACC{s:07d}",
                   "Modality": MODALITIES[(s + k % 2) % len(MODALITIES)],
                   "ReferringPhysicianName": "Ref^Doctor", "StudyDescription": "Synthetic",
                   "SeriesDescription": f"Series {k % 2}", "PatientBirthDate": "19700101",
                   "PatientSex": "O", "StudyID": str(s), "SeriesNumber": k % 2 + 1}


def fill(index: SQLiteIndex, root: str, instances: int, per_study: int = 40, patients: int = 5000) -> None:
    """Insert :func:`synthetic_instances` into ``index`` as rows of 512x512x16 CT files under
    ``root`` (the files do not exist: searches never read them), 2,000 rows per transaction."""
    batch = []
    for a in synthetic_instances(instances, per_study, patients):
        batch.append(InstanceRecord(
            patient_id=a["PatientID"], patient_name=a["PatientName"], study_uid=a["StudyInstanceUID"],
            series_uid=a["SeriesInstanceUID"], sop_instance_uid=a["SOPInstanceUID"],
            sop_class_uid=a["SOPClassUID"], transfer_syntax_uid="1.2.840.10008.1.2.1", number_of_frames=1,
            path=os.path.join(root, "instances", f"{a['SOPInstanceUID']}.dcm"), size=525000,
            dataset_offset=350, pixel_offset=1100, pixel_value_offset=1112, pixel_length=524288,
            frame_index=None, instance_number=a["InstanceNumber"], rows=512, columns=512, bits_allocated=16,
            photometric_interpretation="MONOCHROME2", study_date=a["StudyDate"], study_time=a["StudyTime"],
            accession_number=a["AccessionNumber"], modality=a["Modality"],
            referring_physician_name=a["ReferringPhysicianName"], study_description=a["StudyDescription"],
            series_description=a["SeriesDescription"], patient_birth_date=a["PatientBirthDate"],
            patient_sex=a["PatientSex"], study_id=a["StudyID"], series_number=a["SeriesNumber"]))
        if len(batch) == 2000:
            index.put_batch(batch, [False] * len(batch))
            batch = []
    if batch:
        index.put_batch(batch, [False] * len(batch))
