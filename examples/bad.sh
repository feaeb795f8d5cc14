#!/bin/sh
# An experiment that fails: ls of a missing path exits with status 2.
echo "bad.sh: listing a folder that does not exist"
ls /this/path/does/not/exist
