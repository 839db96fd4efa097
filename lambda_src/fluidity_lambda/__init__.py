"""Fluidity's control plane: the AWS Lambda handlers that start and stop the server.

The server runs as an ECS Fargate service whose desired count is 0 or 1. Four handlers move it
between the two; each is a module with a ``handler(event, context)`` entry point:

``fluidity_lambda.wake.handler``     POST /wake: desired count 1 if it was 0; the status.
``fluidity_lambda.status.handler``   GET /status: the state and, once running, the address.
``fluidity_lambda.sleep.handler``    every few minutes (EventBridge): stop it when idle.
``fluidity_lambda.kill.handler``     POST /kill and a daily schedule: desired count 0 now.

Each accepts an API Gateway proxy event (answering with statusCode/headers/body) or a direct
or scheduled invocation (answering with the plain JSON object). The package ships alone in a
zip (``lambda_src/build_zip.py``) and needs nothing but boto3 from the Lambda runtime, so it
never imports ``fluidity``. docs/control-plane.md has the JSON contract and the decisions.

Errors, one tree (``common``); an API caller gets ``{"error": code, "message": text}``
with the status shown, a direct invocation gets the exception::

    ControlPlaneError          500 internal
    ├── ConfigError            500 config_error        an environment variable is missing or bad
    ├── ServiceNotFoundError   500 service_not_found   no such ECS cluster or service
    └── AwsError               502 aws_error           an AWS call failed
                               503 throttled           ...because AWS throttled it
"""
