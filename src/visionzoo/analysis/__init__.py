from .gradcat import gradcat

__all__ = ["gradcat"]
