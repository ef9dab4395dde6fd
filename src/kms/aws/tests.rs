//! Unit tests of the aws-kms provider.
