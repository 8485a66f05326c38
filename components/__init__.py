"""The pipeline's steps as lightweight KFP components (each module also holds the plain-Python logic)."""
