"""ReactPy components and hooks that show Runstream streams live."""
