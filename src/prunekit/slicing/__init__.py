"""Slicing: make a transformer's residual stream narrower (SliceGPT), so the model is smaller and
faster as a plain dense model that stock transformers classes load."""

from .layout import SLICEABLE, decoder_parts
from .slicegpt import SliceConfig, SlicePlan, SliceReport, plan_slice, slice_, sliced_width

__all__ = ["SLICEABLE", "SliceConfig", "SlicePlan", "SliceReport", "decoder_parts", "plan_slice", "slice_",
           "sliced_width"]
