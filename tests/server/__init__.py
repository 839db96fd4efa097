"""Tests of the server's upstream side: egress, resolver, activity, and the stream handler."""
