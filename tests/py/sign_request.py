"""Signs a Query API request with botocore's SigV4 signer, as of AGE_SECONDS
ago, without sending it: the test sends (or replays) it itself.

Usage: sign_request.py URL FORM_BODY AGE_SECONDS ACCESS_KEY_ID SECRET

Prints {"headers": {name: value}} for a POST of FORM_BODY to URL, signed
for service elasticloadbalancing in $AWS_REGION (default us-east-1).
"""
import datetime
import json
import os
import sys

import botocore.auth
import botocore.awsrequest
import botocore.credentials


def main():
    url, body, age, key, secret = sys.argv[1:6]
    when = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(
        seconds=int(age)
    )
    botocore.auth.get_current_datetime = lambda *args, **kwargs: when
    request = botocore.awsrequest.AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    signer = botocore.auth.SigV4Auth(
        botocore.credentials.Credentials(key, secret),
        "elasticloadbalancing",
        os.environ.get("AWS_REGION", "us-east-1"),
    )
    signer.add_auth(request)
    prepared = request.prepare()
    print(json.dumps({"headers": dict(prepared.headers.items())}))


if __name__ == "__main__":
    main()
