"""Model code the stages load from local files: HRNetV2-W18 and dlib's packaged models."""
