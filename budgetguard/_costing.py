"""What a call costs: estimates before it runs, exact prices after, and the fallback rules.

The rules for a model with no price (``on_unknown_model``) and for output
sizes a call does not bound (learned per model, else ``default_output_tokens``)
live here, once, for every entry point.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .errors import UnknownModelError
from .money import MONEY, to_decimal, to_units
from .pricing import ModelPrice, cost_of, default_table, lookup, price_units
from .pricing._cost import estimate_units
from .tokens import call_shape, count_tokens
from .usage import StreamMeter, Usage, extract_usage

if TYPE_CHECKING:
    from ._call import Call
    from ._estimate import Learner

__all__ = ["FALLBACK_PRICE", "Pricer", "bedrock_arguments", "model_argument"]

logger = logging.getLogger("budgetguard")

# How far a cost the response reports may be from the price table's before a
# warning (once per model): a quarter either way.
REPORTED_COST_TOLERANCE = Decimal("0.25")

# What a model with no known price costs under on_unknown_model="fallback",
# dollars per million input and output tokens: deliberately on the high side
# of today's frontier models, so that unknown spend is over- not under-counted.
FALLBACK_PRICE = (Decimal("10"), Decimal("40"))

_PLAIN = (str, bytes, int, float, Decimal)


def _outside_budgetguard() -> int:
    """Return the stack level of the first frame outside budgetguard and wrapt (the caller's)."""
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(here) and "wrapt" not in filename:
            return level
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return 1


def model_argument(arguments: Mapping[str, Any]) -> str | None:
    """Return the model a call's arguments name: ``model``, or Bedrock's ``modelId``."""
    model = arguments.get("model")
    if isinstance(model, str):
        return model
    model_id = arguments.get("modelId")
    return model_id if isinstance(model_id, str) else None


def bedrock_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Read Bedrock Converse arguments (``modelId``, content blocks) as an OpenAI-shaped call."""

    def text(blocks: Any) -> str:
        if isinstance(blocks, str):
            return blocks
        if not isinstance(blocks, list):
            return ""
        return "\n".join(
            str(block["text"]) for block in blocks if isinstance(block, Mapping) and "text" in block
        )

    messages = [
        {"role": message.get("role", "user"), "content": text(message.get("content"))}
        for message in arguments.get("messages") or ()
        if isinstance(message, Mapping)
    ]
    found: dict[str, Any] = {"model": arguments["modelId"], "messages": messages}
    system = text(arguments.get("system"))
    if system:
        found["system"] = system
    config = arguments.get("inferenceConfig")
    if isinstance(config, Mapping) and type(config.get("maxTokens")) is int:
        found["max_tokens"] = config["maxTokens"]
    return found


# A priced model's projection: input tokens, output tokens, the model's price.
_Tokens = tuple[int, int, ModelPrice]


def _estimated_usage(tokens: _Tokens, model: str) -> Usage:
    """Return the ``Usage`` a projection prices as (for the Decimal path and reports)."""
    return Usage(input_tokens=tokens[0], output_tokens=tokens[1], model=model, estimated=True)


class Pricer:
    """Price calls for one guard, under its unknown-model and output-size rules."""

    def __init__(
        self,
        on_unknown_model: str,
        fallback_price: tuple[object, object],
        default_output_tokens: int,
        learner: Learner,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.on_unknown_model = on_unknown_model
        self.fallback_price = (
            to_decimal(fallback_price[0], "fallback_price input"),
            to_decimal(fallback_price[1], "fallback_price output"),
        )
        self.default_output_tokens = default_output_tokens
        self.learner = learner
        # Dated prices: a call is priced at the prices in force by this clock.
        self.clock = clock
        # "use": charge the cost a response reports itself; "ignore": price its tokens.
        self.reported_cost = "use"
        self._warned: set[str] = set()

    def estimate(self, arguments: Mapping[str, Any]) -> tuple[Decimal, str] | None:
        """Return the projected cost and model of an LLM call from its arguments.

        ``None`` when the arguments name no model or carry no prompt. Output
        is ``max_tokens`` (or its siblings) when set, else what calls of the
        model wrote lately, else ``default_output_tokens``, times ``n``
        choices. A model with no price is refused here under
        ``on_unknown_model="raise"``, before any money is spent.
        """
        found = self._estimate(arguments)
        if found is None:
            return None
        cost, model = found
        if isinstance(cost, tuple):
            return cost_of(_estimated_usage(cost, model), at=self.clock()).total, model
        return cost, model

    def estimate_units(self, arguments: Mapping[str, Any]) -> tuple[int, str] | None:
        """Return ``estimate`` in whole ledger units (``to_units`` of it), priced in integers."""
        found = self._estimate(arguments)
        if found is None:
            return None
        cost, model = found
        if not isinstance(cost, tuple):
            return to_units(cost), model
        tokens, output, price = cost
        # The clock is read only for a model with dated prices.
        at = self.clock() if price.dated else None
        units = estimate_units(price, tokens, output, at=at)
        if units is None:  # too large for the integer path: the Decimal one decides
            units = price_units(_estimated_usage(cost, model), price, at=at)
        return units, model

    def _estimate(self, arguments: Mapping[str, Any]) -> tuple[Decimal | _Tokens, str] | None:
        """Do ``estimate``: the tokens a priced model's call projects, else its cost."""
        model = arguments.get("model")
        if not isinstance(model, str):
            if not isinstance(arguments.get("modelId"), str):
                return None
            arguments = bedrock_arguments(arguments)
        shape = call_shape(arguments)
        if shape is None:
            return None
        output = shape.max_output_tokens
        if output is None:
            learned = self.learner.output_tokens(shape.model)
            output = learned if learned is not None else self.default_output_tokens
        price = lookup(shape.model)
        if price is not None and price.max_output_tokens is not None:
            # The vendors reject a max_tokens above the model's limit, so no
            # call can write more: estimate at the limit.
            output = min(output, price.max_output_tokens)
        choices = arguments.get("n")
        if type(choices) is int and choices > 1:
            output *= choices
        if price is None:
            if self.on_unknown_model == "raise":
                raise UnknownModelError(shape.model)
            if self.on_unknown_model == "ignore":
                return Decimal(0), shape.model
            tokens = count_tokens(shape.text_or_messages, shape.model)
            return self.fallback_cost(tokens, output), shape.model
        # What tokens.projected_cost prices (capped above already).
        tokens = count_tokens(shape.text_or_messages, shape.model)
        return (tokens, output, price), shape.model

    def fallback_cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """Return what tokens of a model with no price cost at the fallback price."""
        per_input, per_output = self.fallback_price
        total = MONEY.add(
            MONEY.multiply(per_input, input_tokens), MONEY.multiply(per_output, output_tokens)
        )
        return MONEY.scaleb(total, -6)

    def price(self, usage: Usage, model: str | None = None) -> tuple[Decimal, bool]:
        """Return the exact cost of ``usage`` and whether its model had a price.

        Applies ``on_unknown_model`` to a model with no price: the fallback
        price with a warning once per model, $0, or ``UnknownModelError``
        (raised by the caller after the call is charged).
        """
        name = usage.model or model
        reported = usage.reported_cost
        if reported is not None and self.reported_cost == "use":
            self._check_reported(usage, name, reported)
            return reported, True
        try:
            if name is None:
                raise UnknownModelError("", "the response names no model and none was given")
            return cost_of(usage, name, at=self.clock()).total, True
        except UnknownModelError:
            if self.on_unknown_model == "ignore":
                return Decimal(0), False
            self.warn_once(
                f"unpriced:{name}",
                f"no price known for model {name!r}; charging the fallback price "
                f"(${self.fallback_price[0]}/M input, ${self.fallback_price[1]}/M output). "
                "Register a price with budgetguard.register_model(...)",
            )
            return self.fallback_cost(usage.total_input_tokens, usage.total_output_tokens), False

    def price_units(self, usage: Usage, model: str | None = None) -> tuple[int, bool]:
        """Return what ``price`` returns, in whole ledger units: the hot path, in integers.

        The units are exactly ``to_units`` of ``price``'s cost (rounded up),
        under the same rules for reported costs and unknown models.
        """
        name = usage.model or model
        if usage.reported_cost is not None and self.reported_cost == "use":
            cost, priced = self.price(usage, model)
            return to_units(cost), priced
        found = default_table().lookup(name) if name else None
        if found is None:
            cost, priced = self.price(usage, model)  # the rules for a model with no price
            return to_units(cost), priced
        # The clock is read only for a model with dated prices.
        return price_units(usage, found, at=self.clock() if found.dated else None), True

    def units_of_result(self, call: Call, result: Any) -> tuple[int | None, Usage | None, bool]:
        """Return ``of_result`` with the cost in whole ledger units (``price_units``)."""
        if call.has_inner or result is None or isinstance(result, _PLAIN):
            return None, None, True
        usage = extract_usage(result)
        if usage is None:
            return None, None, True
        units, priced = self.price_units(usage, call.request_model)
        return units, usage, priced

    def units_of_stream(
        self, call: Call, meter: StreamMeter | None
    ) -> tuple[int | None, Usage | None, bool]:
        """Return ``of_stream`` with the cost in whole ledger units (``price_units``)."""
        if call.has_inner:
            return None, None, True
        usage = meter.usage() if meter is not None else None
        if usage is None:
            return None, None, True
        if usage.model is None and call.request_model is not None:
            usage = usage.with_model(call.request_model)
        units, priced = self.price_units(usage, call.request_model)
        return units, usage, priced

    def of_result(self, call: Call, result: Any) -> tuple[Decimal | None, Usage | None, bool]:
        """Return (cost, usage, priced) of a response; cost ``None`` if it reports no usage."""
        if call.has_inner or result is None or isinstance(result, _PLAIN):
            return None, None, True
        usage = extract_usage(result)
        if usage is None:
            return None, None, True
        cost, priced = self.price(usage, call.request_model)
        return cost, usage, priced

    def of_stream(
        self, call: Call, meter: StreamMeter | None
    ) -> tuple[Decimal | None, Usage | None, bool]:
        """Return (cost, usage, priced) of a stream from what its chunks carried."""
        if call.has_inner:
            return None, None, True  # the calls made inside charged themselves
        usage = meter.usage() if meter is not None else None
        if usage is None:
            return None, None, True
        if usage.model is None and call.request_model is not None:
            usage = usage.with_model(call.request_model)
        cost, priced = self.price(usage, call.request_model)
        return cost, usage, priced

    def _check_reported(self, usage: Usage, name: str | None, reported: Decimal) -> None:
        """Warn once per model when a reported cost is far from the price table's."""
        if name is None or f"reported:{name}" in self._warned:
            return
        try:
            ours = cost_of(usage, name).total
        except UnknownModelError:
            return  # nothing to compare with: the reported cost is all there is
        if abs(reported - ours) > REPORTED_COST_TOLERANCE * max(ours, reported):
            self.warn_once(
                f"reported:{name}",
                f"the response reports a cost of ${reported} for model {name!r} "
                f"({usage.cost_reporter or 'provider'}); budgetguard's price table "
                f"says ${ours}. Charging the reported cost; pass "
                "reported_cost='ignore' to BudgetGuard to charge the table's",
            )

    def unpriced_error(self, usage: Usage | None, priced: bool) -> UnknownModelError | None:
        """Return the error ``on_unknown_model="raise"`` owes for an unpriced call, if any."""
        if priced or usage is None or self.on_unknown_model != "raise":
            return None
        return UnknownModelError(
            usage.model or "",
            f"no price known for model {usage.model!r}; the call was charged the "
            "fallback price. Register a price with budgetguard.register_model(...)",
        )

    def warn_once(self, topic: str, message: str) -> None:
        """Warn (``warnings`` and the log) about ``topic`` the first time only."""
        if topic in self._warned:
            return
        self._warned.add(topic)
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=_outside_budgetguard())
