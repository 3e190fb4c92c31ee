"""The plugin's widgets: the dock and the backend set-up dialog."""
