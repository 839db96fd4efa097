"""The server: accepts agents over mTLS and makes their requests to the internet."""
