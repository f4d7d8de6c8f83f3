#!/usr/bin/env python3
"""Send one test message to the quickstart node (127.0.0.1:2525) and print the dialogue."""
import smtplib
import sys

host, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"), 2525
message = (
    "From: alice@example.org\r\n"
    "To: you@example.test\r\n"
    "Subject: Hello from the quickstart\r\n"
    "\r\n"
    "If you can read this in /tmp/mtac-quickstart/Maildir/new, mtac works.\r\n"
)
with smtplib.SMTP(host, port, local_hostname="client.example.org") as smtp:
    smtp.set_debuglevel(1)
    refused = smtp.sendmail("alice@example.org", ["you@example.test"], message)
print("accepted" if not refused else f"refused: {refused}")
