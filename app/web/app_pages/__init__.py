"""The app's pages (scripts run by Streamlit through st.navigation)."""
