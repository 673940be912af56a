"""The Streamlit web app: server, pages, views, figures, uploads, Host guard, serving caches."""
