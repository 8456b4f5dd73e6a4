"""msnl: new multiple-sclerosis lesions between two FLAIR MRIs of the same patient.

The science lives here: arrays (with voxel spacing and affine) in, arrays and tables out.
No Dask, no Zarr, no Streamlit in this package.
"""

__version__ = "0.1.0"
