#!/usr/bin/env bash
# Once per AWS account (and run bucket), before the first `ray up cluster/aws.yaml`: the two
# instance profiles the nodes run with, each with only what its nodes do. Safe to run
# again: what exists is left as it is, the policies are set anew.
#
#   qfleet-head (aws.yaml's head: the driver, the learner, Ray's autoscaler)
#     launches and stops the workers                  AmazonEC2FullAccess
#     ... from the AMI's SSM name (resolve:ssm:)      AmazonSSMReadOnlyAccess
#     ... handing them their profile                  iam:PassRole on qfleet-worker (and itself)
#     pulls your image from ECR                       AmazonEC2ContainerRegistryReadOnly
#     the driver writes --run-dir s3://BUCKET/...     read/write on BUCKET alone
#   qfleet-worker (aws.yaml's actor nodes: actors run job code, nothing else)
#     pulls your image from ECR                       AmazonEC2ContainerRegistryReadOnly
#     the run bucket, for job code that reads it      read/write on BUCKET alone
# (Ray's own default role, made when a file names none, grants EC2 and S3 full access and
# goes to the head alone; the workers here get no EC2, IAM or other-bucket rights.)
#
#   cluster/aws-setup.sh BUCKET
set -euo pipefail
BUCKET="${1:?usage: cluster/aws-setup.sh BUCKET (the bucket of your --run-dir s3://BUCKET/...)}"
HEAD=qfleet-head
WORKER=qfleet-worker
# EC2 sees a new instance profile some seconds after IAM made it; Ray's own bootstrap
# waits 15 s after creating one. A `ray up` right after this script would otherwise fail.
SETTLE_S="${QFLEET_IAM_SETTLE_S:-15}"

TRUST='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
  "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}'
BUCKET_POLICY="{\"Version\": \"2012-10-17\", \"Statement\": [
  {\"Effect\": \"Allow\", \"Action\": [\"s3:ListBucket\", \"s3:GetBucketLocation\"],
   \"Resource\": \"arn:aws:s3:::$BUCKET\"},
  {\"Effect\": \"Allow\", \"Action\": [\"s3:GetObject\", \"s3:PutObject\", \"s3:DeleteObject\"],
   \"Resource\": \"arn:aws:s3:::$BUCKET/*\"}]}"
created=0

role() {  # NAME MANAGED-POLICY...: the role and its instance profile, with these policies
  local name="$1"
  shift
  if ! aws iam get-role --role-name "$name" >/dev/null 2>&1; then
    aws iam create-role --role-name "$name" --assume-role-policy-document "$TRUST" >/dev/null
  fi
  for policy in "$@"; do
    aws iam attach-role-policy --role-name "$name" \
      --policy-arn "arn:aws:iam::aws:policy/$policy"
  done
  aws iam put-role-policy --role-name "$name" --policy-name run-bucket \
    --policy-document "$BUCKET_POLICY"
  if ! aws iam get-instance-profile --instance-profile-name "$name" >/dev/null 2>&1; then
    aws iam create-instance-profile --instance-profile-name "$name" >/dev/null
    created=1
  fi
  local roles
  roles=$(aws iam get-instance-profile --instance-profile-name "$name" \
    --query 'InstanceProfile.Roles[].RoleName' --output text)
  if [[ " $roles " != *" $name "* ]]; then
    aws iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name"
    created=1
  fi
  aws iam wait instance-profile-exists --instance-profile-name "$name"
}

role "$WORKER" AmazonEC2ContainerRegistryReadOnly
role "$HEAD" AmazonEC2FullAccess AmazonSSMReadOnlyAccess AmazonEC2ContainerRegistryReadOnly
HEAD_ARN=$(aws iam get-role --role-name "$HEAD" --query Role.Arn --output text)
WORKER_ARN=$(aws iam get-role --role-name "$WORKER" --query Role.Arn --output text)
aws iam put-role-policy --role-name "$HEAD" --policy-name pass-node-roles --policy-document \
  "{\"Version\": \"2012-10-17\", \"Statement\": [{\"Effect\": \"Allow\",
    \"Action\": \"iam:PassRole\", \"Resource\": [\"$HEAD_ARN\", \"$WORKER_ARN\"]}]}"

if [[ "$created" == 1 && "$SETTLE_S" != 0 ]]; then
  echo "waiting ${SETTLE_S} s for EC2 to see the new instance profiles"
  sleep "$SETTLE_S"
fi
echo "instance profiles $HEAD and $WORKER ready (bucket $BUCKET)"
