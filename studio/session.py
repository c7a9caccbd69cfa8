"""What every handler needs, built once per server: the policy, the run manager, the machine and
the pool of model jobs; and `Studio.handler`, which hands each handler the user who asked."""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import gradio as gr

from core.runs import RunManager

from .access import AccessError, Policy, User
from .errors import friendly
from .i18n import lang_of, speaking
from .jobs import JobPool
from .machine import Machine


@dataclass
class Studio:
    policy: Policy
    manager: RunManager
    machine: Machine
    jobs: JobPool

    def handler(self, fn):
        """`fn(user, *inputs)` as a Gradio handler of `*inputs`: Gradio injects the request and
        the Hugging Face profile (Space mode), the user is built from them, `fn` runs in the
        page's language (studio/i18n.py), and any failure is one line on the page."""
        policy = self.policy
        sig = inspect.signature(fn)
        params = [p.replace(annotation=inspect.Parameter.empty)
                  for p in list(sig.parameters.values())[1:]]
        # first, so that Gradio (which inserts them by position) also serves `*values` handlers
        extra = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                   annotation=gr.Request),
                 inspect.Parameter("profile", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                   annotation=gr.OAuthProfile | None)]

        # `friendly` inside, so that a failure's one line is in the page's language too
        if inspect.isgeneratorfunction(fn):
            def run(request, profile, *args):
                yield from fn(policy.user(request, profile), *args)

            run.__name__ = fn.__name__
            call = friendly(run)

            def wrapper(request, profile, *args):
                lang = lang_of(request)
                steps = call(request, profile, *args)
                while True:  # each step in the page's language, whichever thread runs it
                    with speaking(lang):
                        try:
                            item = next(steps)
                        except StopIteration:
                            return
                    yield item
        else:
            def run(request, profile, *args):
                return fn(policy.user(request, profile), *args)

            run.__name__ = fn.__name__
            call = friendly(run)

            def wrapper(request, profile, *args):
                with speaking(lang_of(request)):
                    return call(request, profile, *args)
        functools.update_wrapper(wrapper, fn)
        del wrapper.__wrapped__  # Gradio must see the signature below, not fn's
        wrapper.__signature__ = sig.replace(parameters=extra + params,
                                            return_annotation=inspect.Signature.empty)
        # only the injected ones: Gradio evaluates these, and fn's own may be strings
        wrapper.__annotations__ = {"request": gr.Request, "profile": gr.OAuthProfile | None}
        return wrapper

    def runs_of(self, user: User):
        """The runs this user may see, newest first (a visitor: the published example)."""
        if user.role == "visitor":
            example = self.policy.example_run()
            return [self.manager.status(example)] if example else []
        return self.manager.list(user.run_folders())


def require_training(user: User) -> None:
    if not user.can_train:
        raise AccessError("Sign in with Hugging Face (top of the page) to train your own model.")
