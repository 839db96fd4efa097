"""`fluidity deploy` and `fluidity destroy`: the AWS deployment, from nothing and back.

Deploying runs these steps, each safe to repeat (a second run updates, changing only what
differs):

1. read the certificates (`fluidity certs init`) and check the inputs, schedules included;
2. build the Lambda zip (lambda_src/build_zip.py) and upload it to S3 under its SHA-256;
3. store the server's PEMs as one Secrets Manager secret (JSON), which ECS injects into the
   container's environment at task start;
4. create or update the stacks `<prefix>-fargate` (cfn/fargate.yaml) and `<prefix>-lambda`
   (cfn/lambda.yaml) through change sets: the changes are shown before they are applied;
5. read the outputs, fetch the API key's value and write the agent's config file.

Destroying deletes the stacks, the secret and the uploaded code (and the bucket, if deploy
created it), after asking.

Blocking boto3 is fine here: this is a command-line tool, not the event loop.

Errors::

    DeployError                 anything that stops a deployment; the message says what to do
    ├── StackFailed             a stack operation failed; carries the events that explain it
    └── Aborted                 the user declined the changes
"""

from __future__ import annotations

from fluidity.deploy.errors import Aborted, DeployError, StackFailed

__all__ = ["Aborted", "DeployError", "StackFailed"]
