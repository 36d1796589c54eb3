# -*- coding: utf-8 -*-
# Python 2.7 ONLY. Runs the Autobahn|TestSuite fuzzing client (wstest -m
# fuzzingclient) with two additions that plain `wstest` lacks:
#   * a per-case progress line (case id, wall time) so a CI log shows where a
#     run stalls;
#   * a deadline: when it passes, the reports for every case finished so far
#     are still written (plain wstest writes nothing unless the whole run
#     ends), then the process exits with code 4.
#
# It is started by scripts/autobahn, which puts Autobahn's install folder on
# the path; by hand:
#   python2.7 scripts/autobahn_wstest.py SITE_DIR SPEC_JSON DEADLINE_SECONDS
# SITE_DIR is the `pip install --target` folder (.autobahn/site): it is added
# with site.addsitedir so that the zope namespace package's .pth file loads.
import site
import sys
import time

if len(sys.argv) != 4:
    sys.stderr.write("usage: %s SITE_DIR SPEC_JSON DEADLINE_SECONDS\n" % sys.argv[0])
    sys.exit(2)

site_dir, spec_path, deadline = sys.argv[1], sys.argv[2], float(sys.argv[3])
site.addsitedir(site_dir)

# Must come before the reactor is imported: picks the epoll reactor.
from autobahntestsuite import choosereactor  # noqa: F401
import json
from twisted.internet import reactor
from autobahntestsuite import fuzzing

spec = json.load(open(spec_path))
state = {"reports": False, "timed_out": False, "started": time.time(), "cases": 0}

_orig_create = fuzzing.FuzzingClientFactory.createReports
_orig_next = fuzzing.FuzzingClientFactory.nextCase


def create_reports(self, *a, **kw):
    state["reports"] = True
    return _orig_create(self, *a, **kw)


def next_case(self):
    more = _orig_next(self)
    if more:
        state["cases"] += 1
        sys.stdout.write("[%7.1fs] case %s (%d/%d)\n" % (
            time.time() - state["started"], self.currentCaseId,
            self.currSpecCase + 1, len(self.specCases)))
        sys.stdout.flush()
    return more


fuzzing.FuzzingClientFactory.createReports = create_reports
fuzzing.FuzzingClientFactory.nextCase = next_case

factory = fuzzing.FuzzingClientFactory(spec)


def on_deadline():
    state["timed_out"] = True
    sys.stdout.write("DEADLINE of %ds passed: writing reports of the cases finished so far\n" % deadline)
    sys.stdout.flush()
    reactor.stop()


deadline_call = reactor.callLater(deadline, on_deadline)


def before_shutdown():
    if deadline_call.active():
        deadline_call.cancel()
    if not state["reports"]:
        # Stopped early (deadline or signal): keep what has been measured.
        factory.createReports()


reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
reactor.run()
sys.stdout.write("wstest finished in %.1fs\n" % (time.time() - state["started"]))
sys.exit(4 if state["timed_out"] else 0)
