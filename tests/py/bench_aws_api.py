"""Sets up `cargo xtask bench aws-api`: N instances in moto (a loopback
VPC, subnet 127.0.0.0/22), a balancer `bench-lb` on elb's ELB API with them
all registered, and prints {"target": PATH?QUERY} of one
DescribeInstanceHealth GET presigned for an hour, for wrk to replay (elb
verifies the signature of every request in full).

Usage: bench_aws_api.py MOTO_URL ELB_API_URL KEY SECRET N LB_PORT
"""
import json
import os
import sys

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials


def main():
    moto_url, api_url, key, secret, count, lb_port = sys.argv[1:7]
    count = int(count)
    region = os.environ.get("AWS_REGION", "us-east-1")
    moto = dict(
        endpoint_url=moto_url,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ec2 = boto3.client("ec2", **moto)
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/22", AvailabilityZone=f"{region}a")
    subnet = subnet["Subnet"]["SubnetId"]
    ids = []
    while len(ids) < count:
        batch = min(100, count - len(ids))
        reservation = ec2.run_instances(
            ImageId="ami-12c6146b", MinCount=batch, MaxCount=batch, SubnetId=subnet
        )
        for instance in reservation["Instances"]:
            assert instance["PrivateIpAddress"].startswith("127.0."), instance["PrivateIpAddress"]
            ids.append(instance["InstanceId"])
    elb = boto3.client(
        "elb",
        endpoint_url=api_url,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )
    elb.create_load_balancer(
        LoadBalancerName="bench-lb",
        Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": int(lb_port), "InstancePort": 9}],
        AvailabilityZones=[f"{region}a"],
    )
    # Port 9 (discard): nothing listens on the loopback instances, so the
    # checks fail at once and stay on loopback.
    elb.configure_health_check(
        LoadBalancerName="bench-lb",
        HealthCheck={"Target": "TCP:9", "Interval": 30, "Timeout": 5,
                     "UnhealthyThreshold": 2, "HealthyThreshold": 2},
    )
    elb.register_instances_with_load_balancer(
        LoadBalancerName="bench-lb", Instances=[{"InstanceId": i} for i in ids]
    )
    states = elb.describe_instance_health(LoadBalancerName="bench-lb")["InstanceStates"]
    assert len(states) == count, len(states)
    request = botocore.awsrequest.AWSRequest(
        method="GET",
        url=f"{api_url}/?Action=DescribeInstanceHealth&Version=2012-06-01&LoadBalancerName=bench-lb",
    )
    botocore.auth.SigV4QueryAuth(
        botocore.credentials.Credentials(key, secret), "elasticloadbalancing", region, expires=3600
    ).add_auth(request)
    print(json.dumps({"target": request.url[len(api_url):], "instances": len(states)}))


if __name__ == "__main__":
    main()
