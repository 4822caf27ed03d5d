//! Reading the protocol's standard workload (`workload::fill`) back, the
//! way a consumer reads a feed to its end.

use zeroeventhub::client::{Client, HttpService};
use zeroeventhub::protocol::{Cursor, FeedRequest};
use zeroeventhub::workload;

use super::transport::LIVENESS;

/// Reads every partition of `client`'s feed of the standard workload from
/// `_first` to its end, in pages of `page_size`, checking that each event
/// is the next one of its partition; gives how many each partition had.
pub(crate) async fn read_to_end<S: HttpService + Clone>(
    client: &Client<S>,
    page_size: u32,
) -> Vec<u64> {
    let partitions = client.partition_count();
    let mut request = FeedRequest::new(partitions, (0..partitions).map(|p| (p, Cursor::first())))
        .unwrap()
        .with_page_size_hint(page_size);
    let mut seen = vec![0u64; partitions as usize];
    loop {
        let page = tokio::time::timeout(LIVENESS, client.fetch_page(&request))
            .await
            .expect("the page arrives")
            .unwrap();
        for event in page.events() {
            let partition = event.partition as usize;
            assert_eq!(
                event.data,
                workload::event_data(event.partition, seen[partition])
            );
            seen[partition] += 1;
        }
        if !page.made_progress() {
            return seen;
        }
        request = page.next_request(&request);
    }
}
