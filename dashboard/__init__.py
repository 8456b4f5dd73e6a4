"""dashboard: the Streamlit app. It reads results only through `storage`'s xarray API."""
