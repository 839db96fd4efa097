"""The local cloud: stand-ins for API Gateway, EventBridge Scheduler and Fargate on loopback.

They run the real Lambda handlers (from the built zip) against `moto_server`, so the whole
lifecycle (wake, connect, sleep, kill) runs on one machine without AWS or Docker.
"""
