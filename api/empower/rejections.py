"""Which request field a rejected version is about, from the part the artifacts agent named."""

from __future__ import annotations

from streams.adapters import RejectedPart

_HF_FIELDS = {
    RejectedPart.REVISION: "hf_revision",
    RejectedPart.TOKEN: "hf_token",
    RejectedPart.BASE_MODEL: "base_model_name",
}
_CIVITAI_FIELDS = {RejectedPart.BASE_MODEL: ["body", "base_model"]}


def _part(value: str | None) -> RejectedPart:
    return RejectedPart(value) if value else RejectedPart.SOURCE


def hf_rejection_loc(part: str | None) -> list[str]:
    return ["body", _HF_FIELDS.get(_part(part), "model_name")]


def civitai_rejection_loc(part: str | None) -> list[str]:
    return _CIVITAI_FIELDS.get(_part(part), ["body", "source", "civit_url"])
