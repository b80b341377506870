"""Pure tensor operations on images and masks: checks, image conversion, refinement, foreground, compositing."""
