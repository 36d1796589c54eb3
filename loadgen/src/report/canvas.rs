//! The frame every loadgen chart shares: a white SVG canvas, a chart with its caption, margin
//! and label areas, and the legend box.
//!
//! Why it exists: the single-run charts ([`crate::report::plots`],
//! [`crate::report::timeline`]) and the comparison's ([`crate::compare::report::charts`]) used
//! to paste the same plotters setup; here it is written once, so every chart looks alike and a
//! change of style is made in one place.

use std::path::Path;

use plotters::coord::{CoordTranslate, Shift};
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;

/// An SVG file being drawn.
pub type Canvas<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// What drawing into an SVG file can fail with.
pub type SvgError = DrawingAreaErrorKind<std::io::Error>;

/// The sizes of a chart's frame, in pixels: its caption's font and the room for each axis's
/// labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub caption: i32,
    /// Below the chart (x axis).
    pub x_labels: i32,
    /// Left of the chart (y axis).
    pub y_labels: i32,
    /// Right of the chart (a secondary y axis), none when 0.
    pub right_labels: i32,
}

impl Frame {
    /// The frame of a chart that fills its own file.
    pub const STANDARD: Frame = Frame {
        caption: 20,
        x_labels: 45,
        y_labels: 70,
        right_labels: 0,
    };

    /// This frame with a caption of `caption` pixels.
    pub const fn caption(self, caption: i32) -> Frame {
        Frame { caption, ..self }
    }

    /// This frame with `x` and `y` pixels for the labels below and left of the chart.
    pub const fn labels(self, x: i32, y: i32) -> Frame {
        Frame {
            x_labels: x,
            y_labels: y,
            ..self
        }
    }

    /// This frame with `right` pixels for a secondary axis's labels.
    pub const fn right_labels(self, right: i32) -> Frame {
        Frame {
            right_labels: right,
            ..self
        }
    }
}

/// A white canvas of `size` pixels that will be written to `path`.
pub fn svg(path: &Path, size: (u32, u32)) -> Result<Canvas<'_>, SvgError> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// A chart on `area` titled `title` in `frame`, with a 15-pixel margin; the caller builds its
/// coordinates.
pub fn chart<'a, 'b, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    frame: Frame,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", frame.caption))
        .margin(15)
        .x_label_area_size(frame.x_labels)
        .y_label_area_size(frame.y_labels);
    if frame.right_labels > 0 {
        builder.right_y_label_area_size(frame.right_labels);
    }
    builder
}

/// Draws the legend of `chart` at `position`: a black frame on translucent white.
pub fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(position)
        .draw()
}
