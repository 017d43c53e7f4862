"""Verifies a delivery with the reference `standardwebhooks` library (PyPI),
independently of hookwire's own code. Reads JSON on stdin:
{"secret": "whsec_...", "headers": {...}, "body": "<base64>"}; exits 0 when
the signature verifies, 1 when it does not."""
import base64
import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

request = json.load(sys.stdin)
try:
    Webhook(request["secret"]).verify(base64.b64decode(request["body"]), request["headers"])
except WebhookVerificationError as error:
    print(f"not verified: {error}", file=sys.stderr)
    sys.exit(1)
