"""Signs a Query API request with botocore's SigV4 signer, as of AGE_SECONDS
ago, without sending it: the test sends (or replays) it itself.

Usage: sign_request.py URL FORM_BODY AGE_SECONDS ACCESS_KEY_ID SECRET [presign]

Prints {"headers": {name: value}} for a POST of FORM_BODY to URL, signed
for service elasticloadbalancing in $AWS_REGION (default us-east-1); with
`presign`, {"url": ...}: a GET with FORM_BODY as its query string, signed
in the query (X-Amz-Signature, valid 300 s).
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
    presign = sys.argv[6:7] == ["presign"]
    when = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(
        seconds=int(age)
    )
    botocore.auth.get_current_datetime = lambda *args, **kwargs: when
    credentials = botocore.credentials.Credentials(key, secret)
    region = os.environ.get("AWS_REGION", "us-east-1")
    if presign:
        request = botocore.awsrequest.AWSRequest(method="GET", url=f"{url}?{body}")
        botocore.auth.SigV4QueryAuth(credentials, "elasticloadbalancing", region, expires=300).add_auth(
            request
        )
        print(json.dumps({"url": request.url}))
        return
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
