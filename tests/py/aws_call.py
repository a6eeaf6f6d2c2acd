"""One AWS API call with boto3, for elb's tests (tests/src/moto.rs).

Usage: aws_call.py ENDPOINT_URL SERVICE OPERATION JSON_PARAMS

Prints one JSON line: {"ok": result} (ResponseMetadata removed, times as
strings) or {"error": {"Code": ..., "Message": ...}, "status": HTTP_STATUS}
for an error the service answered. Credentials and the region come from
the environment the caller sets. No retries: a test sees each answer.
"""
import json
import os
import sys

import boto3
import botocore.config
import botocore.exceptions


def main():
    endpoint, service, operation, params = sys.argv[1:5]
    client = boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    try:
        result = getattr(client, operation)(**json.loads(params))
    except botocore.exceptions.ClientError as error:
        print(
            json.dumps(
                {
                    "error": error.response.get("Error", {}),
                    "status": error.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
                }
            )
        )
        return
    result.pop("ResponseMetadata", None)
    print(json.dumps({"ok": result}, default=str))


if __name__ == "__main__":
    main()
