"""Grid carbon intensity from codecarbon's bundled data: offline, and strict about unknown places.

codecarbon 3.3.2 silently falls back to a world average (475 g/kWh) for an unknown country and to
the country figure for an unknown region. Here both are errors, so a typo in the configuration
cannot turn into a plausible-looking but wrong carbon figure. The numbers come from the very
function the tracker uses for each measurement (`Emissions.get_private_infra_emissions`, applied
to 1 kWh), so they match codecarbon's own emissions figures exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from codecarbon.core.emissions import Emissions
from codecarbon.core.units import Energy
from codecarbon.external.geography import GeoMetadata
from codecarbon.input import DataSource

# Where codecarbon 3.3.2 has sub-national data (see Emissions.get_private_infra_emissions).
REGIONAL_COUNTRIES = ("USA", "CAN", "CHN", "SWE", "NOR", "FIN")


@dataclass(frozen=True, slots=True)
class GridIntensity:
    g_per_kwh: float
    """Grams of CO2-equivalent per kWh drawn from the grid."""
    source: str
    """Where the figure comes from, e.g. "codecarbon global_energy_mix: FRA" or "override"."""


def grid_intensity(
    country_iso_code: str | None, region: str | None, override: float | None
) -> GridIntensity:
    """The grid's carbon intensity, from codecarbon's bundled data (no network).

    `override` wins. Without a country, codecarbon's world average (said so in `source`). An
    unknown country code, or a region codecarbon has no data for, is a ValueError naming it.
    """
    if override is not None:
        if not math.isfinite(override) or override < 0:
            raise ValueError(
                f"carbon intensity override must be a finite number >= 0, got {override}"
            )
        return GridIntensity(float(override), "override")
    data = _data()
    if country_iso_code is None:
        if region is not None:
            raise ValueError(f"region {region!r} is set without a country_iso_code")
        world = float(data.get_carbon_intensity_per_source_data()["world_average"])
        return GridIntensity(world, "codecarbon world average (no country set)")
    code = normalise_country(country_iso_code)
    if region is None:
        geo = GeoMetadata(country_iso_code=code)
        source = f"codecarbon global_energy_mix: {code}"
    else:
        geo = GeoMetadata(country_iso_code=code, region=region.strip().lower())
        _check_region(data, geo)
        source = f"codecarbon regional data: {code}/{geo.region}"
    kg_per_kwh = Emissions(data).get_private_infra_emissions(Energy.from_energy(kWh=1), geo)
    return GridIntensity(round(float(kg_per_kwh) * 1000, 6), source)


def normalise_country(country_iso_code: str) -> str:
    """The upper-case ISO 3166 alpha-3 code, or a ValueError if codecarbon has no data for it.

    codecarbon's lookup is case-sensitive: "fra" would silently get the world average.
    """
    code = country_iso_code.strip().upper()
    if code not in _data().get_global_energy_mix_data():
        raise ValueError(
            f"unknown country_iso_code {country_iso_code!r}: codecarbon's global_energy_mix.json "
            "has no such ISO 3166 alpha-3 code (e.g. FRA, USA, DEU)"
        )
    return code


def _data() -> Any:
    return DataSource()  # type: ignore[no-untyped-call]


def _check_region(data: Any, geo: GeoMetadata) -> None:
    code, region = geo.country_iso_code, str(geo.region)
    if code not in REGIONAL_COUNTRIES:
        raise ValueError(
            f"codecarbon has no regional data for {code} (only for "
            f"{', '.join(REGIONAL_COUNTRIES)}): leave region unset, got {region!r}"
        )
    one_kwh = Energy.from_energy(kWh=1)
    if code == "USA":
        known = region in data.get_country_emissions_data("usa") and not region.startswith("_")
    elif code == "CAN":
        known = region in data.get_country_energy_mix_data("can")
    elif code == "CHN":
        # Private helpers of codecarbon 3.3.2: they return None where the tracker would fall
        # back to the national figure without a word.
        known = Emissions(data)._try_get_china_province_emissions(one_kwh, geo) is not None
    else:
        known = Emissions(data)._try_get_nordic_region_emissions(one_kwh, geo) is not None
    if not known:
        raise ValueError(f"unknown region {region!r} for {code} in codecarbon's bundled data")
