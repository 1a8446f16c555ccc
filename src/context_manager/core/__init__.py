"""The real homes of the documented classes (``context_manager.core.<module>``)."""
