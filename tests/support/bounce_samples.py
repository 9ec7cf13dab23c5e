"""Bounce and complaint messages as MTAs write them, for the tests (RFC 3464, RFC 5965, and older formats).

Each is built around the address it reports and the returned original's Message-ID, so one sample serves
the parsing tables and the end-to-end tests alike.
"""

from __future__ import annotations


def postfix_dsn(rcpt: str, to: str, message_id: str, status: str = "5.1.1",
                diagnostic: str = "smtp; 550 5.1.1 <{to}>: Recipient address rejected: User unknown") -> bytes:  # fmt: skip
    """Postfix's bounce(8) notice: multipart/report, per-recipient block, the original's headers."""
    diagnostic = diagnostic.format(to=to)
    return f"""Return-Path: <>
Received: by mx.acme.example (Postfix) id 4Yq3Kp1ZxQz9vT; Mon, 30 Nov 2026 11:00:02 +0000 (UTC)
Date: Mon, 30 Nov 2026 11:00:02 +0000 (UTC)
From: MAILER-DAEMON@mx.acme.example (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {rcpt}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4Yq3Kp1ZxQz9vT.1764500402/mx.acme.example"
Message-Id: <20261130110002.4Yq3Kp1ZxQz9vT@mx.acme.example>

This is a MIME-encapsulated message.

--4Yq3Kp1ZxQz9vT.1764500402/mx.acme.example
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.acme.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{to}>: host mail.example.net[192.0.2.10] said: 550 5.1.1 <{to}>:
    Recipient address rejected: User unknown (in reply to RCPT TO command)

--4Yq3Kp1ZxQz9vT.1764500402/mx.acme.example
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.acme.example
X-Postfix-Queue-ID: 4Yq3Kp1ZxQz9vT
X-Postfix-Sender: rfc822; {rcpt}
Arrival-Date: Mon, 30 Nov 2026 11:00:01 +0000 (UTC)

Final-Recipient: rfc822; {to}
Original-Recipient: rfc822;{to}
Action: {"failed" if status.startswith("5") else "delayed"}
Status: {status}
Remote-MTA: dns; mail.example.net
Diagnostic-Code: {diagnostic}

--4Yq3Kp1ZxQz9vT.1764500402/mx.acme.example
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <{rcpt}>
From: noreply@acme.example
To: {to}
Subject: Reset your password
Message-ID: {message_id}

--4Yq3Kp1ZxQz9vT.1764500402/mx.acme.example--
""".replace("\n", "\r\n").encode()


def exim_dsn(rcpt: str, to: str, message_id: str) -> bytes:
    """Exim's RFC 3464 bounce (dsn_report, Exim 4.x): the original returned as message/rfc822."""
    return f"""Return-path: <>
From: Mail Delivery System <Mailer-Daemon@smtp.acme.example>
To: {rcpt}
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1tQ6b2-0001aB-Cd@smtp.acme.example>
Date: Mon, 30 Nov 2026 11:00:02 +0000
Content-Type: multipart/report; report-type=delivery-status; boundary=1764500402-eximdsn-1804289383
MIME-Version: 1.0
X-Failed-Recipients: {to}
Auto-Submitted: auto-replied

--1764500402-eximdsn-1804289383
Content-type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {to}
    host mail.example.net [192.0.2.10]
    SMTP error from remote mail server after RCPT TO:<{to}>:
    550 5.2.1 The email account that you tried to reach is disabled.

--1764500402-eximdsn-1804289383
Content-type: message/delivery-status

Reporting-MTA: dns; smtp.acme.example

Action: failed
Final-Recipient: rfc822;{to}
Status: 5.2.1
Remote-MTA: dns; mail.example.net
X-Remote-MTA-smtp-greeting: X-str; 220 mail.example.net ESMTP
Diagnostic-Code: smtp; 550 5.2.1 The email account that you tried to reach is disabled.

--1764500402-eximdsn-1804289383
Content-type: message/rfc822

Return-path: <{rcpt}>
From: noreply@acme.example
To: {to}
Subject: Verify your e-mail
Message-ID: {message_id}

Click the link.

--1764500402-eximdsn-1804289383--
""".replace("\n", "\r\n").encode()


def exim_plain(rcpt: str, to: str) -> bytes:
    """An old Exim bounce without a report part: only flufl.bounce's detectors understand it."""
    return f"""From: Mail Delivery System <Mailer-Daemon@smtp.acme.example>
To: {rcpt}
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: {to}

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {to}
    SMTP error from remote mail server after RCPT TO:<{to}>:
    host mail.example.net [192.0.2.10]: 550 5.1.1 unknown user

------ This is a copy of the message, including all the headers. ------

From: noreply@acme.example
To: {to}
Subject: Reset your password
""".replace("\n", "\r\n").encode()


def arf_complaint(rcpt: str, to: str, message_id: str) -> bytes:
    """An RFC 5965 feedback report (a user pressed "this is spam")."""
    return f"""From: <abuse@mailbox.example.net>
Date: Mon, 30 Nov 2026 11:00:02 +0000
Subject: FW: Reset your password
To: <{rcpt}>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP 192.0.2.1 on Mon, 30 Nov 2026.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <{rcpt}>
Original-Rcpt-To: <{to}>
Arrival-Date: Mon, 30 Nov 2026 10:59:00 +0000
Source-IP: 192.0.2.1

--part1_13d.2e68ed54_boundary
Content-Type: text/rfc822-headers

From: noreply@acme.example
To: {to}
Subject: Reset your password
Message-ID: {message_id}

--part1_13d.2e68ed54_boundary--
""".replace("\n", "\r\n").encode()
