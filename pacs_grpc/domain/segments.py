"""Segments of a mask group: the labels a label-map slice's pixel values stand for, with codes.

A group that declares segments stores each slice as an 8-bit greyscale label map: a pixel's value
is its segment's pixel_value (1-255) and 0 is background. The codes follow DICOM's Segment
Description (PS3.3 C.8.20.2), so a group exports to a DICOM Segmentation without loss.

Rules and defaults (documented in protos/pacs/v1/mask.proto too):
- at most 255 segments, pixel values 1-255 and distinct;
- label required, at most 64 characters (DICOM LO); description at most 1,024 (ST);
- codes: value and meaning required, at most 64 characters, no backslash (a DICOM value
  separator); SNOMED CT values are digits (an SCTID); the scheme designator is one of
  CODING_SCHEMES, spelt exactly. The retired SNOMED RT designator SRT is refused with a pointer
  to SCT;
- category and type default to SCT 85756007 "Tissue", DICOM's usual fallback;
- algorithm type defaults to AUTOMATIC when the group names a model, otherwise MANUAL;
  AUTOMATIC and SEMIAUTOMATIC need the group's model_name, which a DICOM Segmentation names as
  the segment's algorithm;
- display colour: sRGB components 0-255 (a DICOM file stores the colour as CIELab).
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pacs_grpc.domain.errors import InvalidArgument

MAX_SEGMENTS = 255
MAX_LABEL_LENGTH = 64
MAX_DESCRIPTION_LENGTH = 1024
MAX_CODE_LENGTH = 64
MAX_UID_LENGTH = 64

# Designators as DICOM PS3.16 Table 8-1 spells them; the set a viewer or PACS recognises without
# a Coding Scheme Identification Sequence. Anatomy and findings (SCT, FMA, RADLEX, NCIt),
# DICOM's own terms (DCM), measurements (LN, UCUM).
CODING_SCHEMES = frozenset({"SCT", "DCM", "LN", "UCUM", "FMA", "RADLEX", "NCIt"})
RETIRED_SCHEMES = {"SRT": "SCT", "SNM3": "SCT", "99SDM": "SCT"}
_SCTID = re.compile(r"^[1-9][0-9]{5,17}$")
_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# Room left for the random part of a UID under a configured root: 24 digits are about 80 bits.
_MIN_RANDOM_DIGITS = 24


class AlgorithmType(enum.Enum):
    """How a segment was made (DICOM's SegmentAlgorithmType). AUTOMATIC and SEMIAUTOMATIC need the
    group's model_name, which a DICOM Segmentation names as the segment's algorithm.
    """

    AUTOMATIC = "AUTOMATIC"
    SEMIAUTOMATIC = "SEMIAUTOMATIC"
    MANUAL = "MANUAL"


_NAMED_ALGORITHMS = frozenset({AlgorithmType.AUTOMATIC, AlgorithmType.SEMIAUTOMATIC})


@dataclass(frozen=True)
class CodedConcept:
    """A DICOM code: value, coding scheme designator, meaning (SCT 85756007 "Tissue"). Codes
    from clients pass the module docstring's rules first.
    """

    code_value: str
    coding_scheme_designator: str
    code_meaning: str


TISSUE = CodedConcept("85756007", "SCT", "Tissue")
# AlgorithmFamilyCodeSequence of an AI model's segments.
ARTIFICIAL_INTELLIGENCE = CodedConcept("123109", "DCM", "Artificial Intelligence")


@dataclass(frozen=True)
class Segment:
    """A validated segment, defaults filled in."""

    pixel_value: int
    label: str
    segmented_property_category: CodedConcept
    segmented_property_type: CodedConcept
    algorithm_type: AlgorithmType
    display_color: tuple[int, int, int] | None = None
    description: str | None = None

    def to_json(self) -> dict[str, object]:
        """The stored form (annotation_mask_group.segments)."""
        return {
            "pixel_value": self.pixel_value,
            "label": self.label,
            "category": _concept_json(self.segmented_property_category),
            "type": _concept_json(self.segmented_property_type),
            "algorithm_type": self.algorithm_type.value,
            "display_color": list(self.display_color) if self.display_color else None,
            "description": self.description,
        }

    @classmethod
    def from_json(cls, value: dict[str, object]) -> Segment:
        color = value.get("display_color")
        return cls(
            pixel_value=int(str(value["pixel_value"])),
            label=str(value["label"]),
            segmented_property_category=_concept_from_json(value["category"]),
            segmented_property_type=_concept_from_json(value["type"]),
            algorithm_type=AlgorithmType(value["algorithm_type"]),
            display_color=(
                (int(color[0]), int(color[1]), int(color[2]))
                if isinstance(color, list) and len(color) == 3
                else None
            ),
            description=str(value["description"]) if value.get("description") else None,
        )


@dataclass(frozen=True)
class SegmentInput:
    """A segment as a client declared it: None where it left a field unset."""

    pixel_value: int
    label: str
    segmented_property_category: CodedConcept | None = None
    segmented_property_type: CodedConcept | None = None
    algorithm_type: AlgorithmType | None = None
    display_color: tuple[int, int, int] | None = None
    description: str = ""


def segments(
    field: str, declared: Sequence[SegmentInput], *, has_model: bool
) -> tuple[Segment, ...]:
    """The declared segments validated, with defaults; ``field`` is the repeated field's path."""
    if len(declared) > MAX_SEGMENTS:
        raise InvalidArgument(field, f"must list at most {MAX_SEGMENTS} segments")
    default_algorithm = AlgorithmType.AUTOMATIC if has_model else AlgorithmType.MANUAL
    seen: set[int] = set()
    checked = []
    for position, item in enumerate(declared):
        at = f"{field}[{position}]"
        if not 1 <= item.pixel_value <= 255:
            raise InvalidArgument(f"{at}.pixel_value", "must be between 1 and 255")
        if item.pixel_value in seen:
            raise InvalidArgument(f"{at}.pixel_value", "is used by an earlier segment")
        seen.add(item.pixel_value)
        if item.algorithm_type in _NAMED_ALGORITHMS and not has_model:
            # DICOM names the algorithm of such a segment (Algorithm Identification).
            raise InvalidArgument(
                f"{at}.algorithm_type", "AUTOMATIC and SEMIAUTOMATIC need the group's model_name"
            )
        checked.append(
            Segment(
                pixel_value=item.pixel_value,
                label=_dicom_text(f"{at}.label", item.label, MAX_LABEL_LENGTH, required=True) or "",
                segmented_property_category=concept(
                    f"{at}.segmented_property_category", item.segmented_property_category
                )
                or TISSUE,
                segmented_property_type=concept(
                    f"{at}.segmented_property_type", item.segmented_property_type
                )
                or TISSUE,
                algorithm_type=item.algorithm_type or default_algorithm,
                display_color=_color(f"{at}.display_color", item.display_color),
                description=_dicom_text(
                    f"{at}.description", item.description, MAX_DESCRIPTION_LENGTH, required=False
                ),
            )
        )
    return tuple(checked)


def concept(field: str, value: CodedConcept | None) -> CodedConcept | None:
    """A validated code; None (use the default) when the client left all three parts empty."""
    if value is None or not (
        value.code_value.strip()
        or value.coding_scheme_designator.strip()
        or value.code_meaning.strip()
    ):
        return None
    scheme = value.coding_scheme_designator.strip()
    if not scheme:
        raise InvalidArgument(f"{field}.coding_scheme_designator", "is required")
    if scheme in RETIRED_SCHEMES:
        raise InvalidArgument(
            f"{field}.coding_scheme_designator",
            f"{scheme} is retired; use {RETIRED_SCHEMES[scheme]} with the SNOMED CT code",
        )
    if scheme not in CODING_SCHEMES:
        spelt = {s.upper(): s for s in CODING_SCHEMES}.get(scheme.upper())
        hint = (
            f"write it {spelt}" if spelt else "must be one of " + ", ".join(sorted(CODING_SCHEMES))
        )
        raise InvalidArgument(f"{field}.coding_scheme_designator", hint)
    code_value = _dicom_text(
        f"{field}.code_value", value.code_value, MAX_CODE_LENGTH, required=True
    )
    assert code_value is not None
    if scheme == "SCT" and not _SCTID.match(code_value):
        raise InvalidArgument(f"{field}.code_value", "must be a SNOMED CT identifier (digits)")
    meaning = _dicom_text(
        f"{field}.code_meaning", value.code_meaning, MAX_CODE_LENGTH, required=True
    )
    assert meaning is not None
    return CodedConcept(code_value, scheme, meaning)


def new_uid(root: str = "") -> str:
    """A new DICOM UID (PS3.5 9.1): ``2.25.<UUID as an integer>`` without a root (PS3.5 B.2),
    else ``<root>.<random digits>``, at most 64 characters.

    A configured root must leave room for 24 random digits (a root of at most 39 characters);
    the random part is a fresh UUID4's integer, cut to the digits that fit.
    """
    value = uuid.uuid4().int
    if not root or root == "2.25":
        return f"2.25.{value}"
    if not _UID_ROOT.match(root):
        raise ValueError("a UID root is digits in dot-separated components, no leading zeros")
    room = MAX_UID_LENGTH - len(root) - 1
    if room < _MIN_RANDOM_DIGITS:
        raise ValueError(
            f"a UID root must be at most {MAX_UID_LENGTH - 1 - _MIN_RANDOM_DIGITS} characters"
        )
    return f"{root}.{value % 10**room}"


def _dicom_text(field: str, value: str, max_length: int, *, required: bool) -> str | None:
    trimmed = value.strip()
    if not trimmed:
        if required:
            raise InvalidArgument(field, "is required")
        return None
    if len(trimmed) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    if any(ord(c) < 32 for c in trimmed):
        raise InvalidArgument(field, "must not contain control characters")
    if "\\" in trimmed:
        raise InvalidArgument(field, "must not contain a backslash")
    return trimmed


def _color(field: str, value: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    for name, component in zip(("red", "green", "blue"), value, strict=True):
        if not 0 <= component <= 255:
            raise InvalidArgument(f"{field}.{name}", "must be between 0 and 255")
    return value


def _concept_json(value: CodedConcept) -> dict[str, str]:
    return {
        "value": value.code_value,
        "scheme": value.coding_scheme_designator,
        "meaning": value.code_meaning,
    }


def _concept_from_json(value: object) -> CodedConcept:
    assert isinstance(value, dict)
    return CodedConcept(str(value["value"]), str(value["scheme"]), str(value["meaning"]))


class LabelMap(Protocol):
    """A (rows, columns) array of segment numbers, one per source image (a numpy uint8 array
    from the SEG reader); use cases only look at its shape."""

    @property
    def shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class SegmentationRead:
    """What a SEG holds, in the server's terms."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    # The series the SEG was drawn on (a mask group belongs to one series).
    source_series_uid: str
    frame_of_reference_uid: str | None
    # As declared in the file: pixel_value is the segment number. The caller validates them
    # (segments() above), which applies defaults and refuses retired codes.
    segments: tuple[SegmentInput, ...]
    algorithm_name: str | None
    algorithm_version: str | None
    content_label: str | None
    # Source SOP Instance UID -> (rows, columns) uint8 label map, pixel value = segment number.
    # Every source instance the SEG references, including those whose frames are all empty.
    label_maps: Mapping[str, LabelMap]
