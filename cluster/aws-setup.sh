#!/usr/bin/env bash
# Once per AWS account, before the first `ray up cluster/aws.yaml`: the instance profile
# every qfleet node runs with (aws.yaml names it `qfleet-node`, for the head and the
# workers). Safe to run again: what exists is left as it is.
#
# What the nodes do with it, and the policy each needs:
#   the head's autoscaler launches workers      AmazonEC2FullAccess, iam:PassRole (itself)
#   ... from the AMI's SSM name (resolve:ssm:)  AmazonSSMReadOnlyAccess
#   every node pulls your image from ECR        AmazonEC2ContainerRegistryReadOnly
#   the driver writes --run-dir s3://...        AmazonS3FullAccess
# (Ray's default role, made when a file names none, has only the first and the last; and
# Ray gives it to the head alone.)
#
#   cluster/aws-setup.sh [NAME=qfleet-node]
set -euo pipefail
NAME="${1:-qfleet-node}"

if ! aws iam get-role --role-name "$NAME" >/dev/null 2>&1; then
  aws iam create-role --role-name "$NAME" --assume-role-policy-document \
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
      "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}' >/dev/null
fi
for policy in AmazonEC2FullAccess AmazonSSMReadOnlyAccess AmazonEC2ContainerRegistryReadOnly \
              AmazonS3FullAccess; do
  aws iam attach-role-policy --role-name "$NAME" \
    --policy-arn "arn:aws:iam::aws:policy/$policy"
done
ROLE_ARN=$(aws iam get-role --role-name "$NAME" --query Role.Arn --output text)
aws iam put-role-policy --role-name "$NAME" --policy-name pass-itself --policy-document \
  "{\"Version\": \"2012-10-17\", \"Statement\": [{\"Effect\": \"Allow\",
    \"Action\": \"iam:PassRole\", \"Resource\": \"$ROLE_ARN\"}]}"

if ! aws iam get-instance-profile --instance-profile-name "$NAME" >/dev/null 2>&1; then
  aws iam create-instance-profile --instance-profile-name "$NAME" >/dev/null
fi
ROLES=$(aws iam get-instance-profile --instance-profile-name "$NAME" \
  --query 'InstanceProfile.Roles[].RoleName' --output text)
if [[ " $ROLES " != *" $NAME "* ]]; then
  aws iam add-role-to-instance-profile --instance-profile-name "$NAME" --role-name "$NAME"
fi
echo "instance profile $NAME ready (role $ROLE_ARN)"
