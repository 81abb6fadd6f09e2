"""arhn-ray: ARHN (Answer-centric Relabeling of Hard Negatives) as a Ray Data batch job."""

__version__ = "0.1.0"
