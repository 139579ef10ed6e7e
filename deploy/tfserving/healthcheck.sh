#!/bin/bash
# Healthy when TensorFlow Serving reports the encoder AVAILABLE on its REST port (no curl in the image).
exec 3<>/dev/tcp/127.0.0.1/8501 || exit 1
printf 'GET /v1/models/atelier_encoder HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
grep -q '"AVAILABLE"' <&3
